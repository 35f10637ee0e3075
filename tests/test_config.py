"""Config reading: defaults, overrides, and one readable line for every kind of mistake."""

from __future__ import annotations

import pytest

from raflora.config import Config, ConfigError
from raflora.config_io import config_to_toml, load_config

BASE = """
[run]
name = "x"
[federation]
num_clients = 4
[task]
name = "synthetic"
train_size = 100
"""


def write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_task_options(tmp_path):
    c = load_config(write(tmp_path, BASE))
    assert isinstance(c, Config)
    assert c.federation.method.name == "raflora" and c.ranks.r_max == 16 and c.out == "runs/x"
    assert c.task.options == {"train_size": 100}


def test_overrides_replace_file_values(tmp_path):
    c = load_config(write(tmp_path, BASE), {"run.rounds": 7, "federation.method": "flora", "run.out": None})
    assert c.run.rounds == 7 and c.federation.method.name == "flora" and c.out == "runs/x"


def test_resolved_toml_reads_back(tmp_path):
    c = load_config(write(tmp_path, BASE + "\n[ranks]\npolicy = 'groups'\nranks = [8, 2]\nshares = [0.25, 0.75]\n"))
    again = write(tmp_path, config_to_toml(c))
    assert load_config(again) == c


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[run]\nroundz = 3", "unknown key run.roundz"),
        ("[train]\nlr = 'fast'", "train.lr must be a number"),
        ("[run]\nrounds = 2.5", "run.rounds must be an integer"),
        ("[run]\nrounds = true", "run.rounds must be an integer"),
        ("[ranks]\nranks = [2, 64]\nr_max = 16", "rank 64 in [ranks] is above ranks.r_max = 16"),
        ("[federation]\nmethod = 'fedavg'", "federation.method = 'fedavg' is not known"),
        ("[task]\nname = 'nope'", "task.name = 'nope' is not known"),
        ("[task]\nbogus = 1", "bogus"),
        ("[colours]\nred = 1", "unknown section [colours]"),
        ("[ranks]\npolicy = 'explicit'\nranks = [2, 4]", "policy 'explicit' needs one per client"),
        ("[ranks]\npolicy = 'groups'\nranks = [2, 4]\nshares = [0.5, 0.6]", "sum to 1"),
        ("[train]\nlocal_steps = 0", "set one of them"),
        ("[federation]\nmethod = 'fedit'", "needs one rank for every client"),
        ("[federation]\nsample_fraction = 0.0", "sample_fraction must be in (0, 1]"),
        ("[partition]\nscheme = 'random'", "partition.scheme"),
        ("[lora]\nscaling = 'big'", "lora.scaling"),
    ],
)
def test_bad_config_is_one_line(tmp_path, extra, message):
    text = BASE
    section = extra.split("\n", 1)[0]
    if extra.startswith("[task]\nname"):
        text = BASE.split("[task]")[0] + extra + "\n"
    elif section in BASE:  # merge into the existing table instead of declaring it twice
        text = BASE.replace(section, extra, 1)
    else:
        text = BASE + "\n" + extra + "\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[run\n"))


def test_user_task_missing_data_file(tmp_path):
    text = "[task]\nname = 'user_text'\ntrain_file = 'no/such.csv'\ntext_column = 't'\nlabel_column = 'l'\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert "no/such.csv" in str(err.value)


# -- [federation.method]: the method with its own options -----------------------------------------
METHOD_BASE = BASE.replace("[federation]\nnum_clients = 4\n", "[federation]\nnum_clients = 4\n{method}\n")


@pytest.mark.parametrize(
    "method, expected",
    [
        ('method = "florist"', {"tau": 0.9}),
        ('[federation.method]\nname = "florist"\ntau = 0.5', {"tau": 0.5}),
        (
            '[federation.method]\nname = "raflora"\nrank_levels = [2, 4, 8, 16]\nweighting = "uniform"',
            {"rank_levels": [2, 4, 8, 16], "weighting": "uniform", "empty_partition": "drop"},
        ),
        ('[federation.method]\nname = "fedsa"\nsfed_alpha = 2', {"sfed_alpha": 2.0, "num_clients": 0}),
    ],
)
def test_the_method_table_holds_the_methods_own_options(tmp_path, method, expected):
    config = load_config(write(tmp_path, METHOD_BASE.format(method=method)))
    assert config.federation.method.options() == expected
    again = load_config(write(tmp_path, config_to_toml(config)))
    assert again.federation.method == config.federation.method, "config.toml reads back to the same method"


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        (
            'method = "flexlora"',
            {"federation.method.tau": 0.5},
            "unknown key federation.method.tau for method flexlora (florist has it); flexlora's options: none",
        ),
        (
            '[federation.method]\nname = "florist"\ntau = 1.5',
            {},
            "federation.method: florist: tau must be in (0, 1], got 1.5",
        ),
        ("[federation.method]\ntau = 0.5", {}, "federation.method needs name = one of"),
        (
            'method = "florist"\ntau = 0.8',
            {},
            'federation.tau is now an option of the method: write it under [federation.method] (name = "florist", tau = ...)',
        ),
        ('method = "raflora"\nrank_levels = [2]', {}, "federation.rank_levels is now an option of the method"),
        (
            '[federation.method]\nname = "raflora"\nrank_levels = [2, 4]',
            {},
            "federation.method raflora: rank_levels [2, 4] must include every client rank [2, 4, 8, 16]",
        ),
    ],
)
def test_method_mistakes_are_one_line(tmp_path, method, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, METHOD_BASE.format(method=method)), overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_method_override_takes_the_new_method_with_its_defaults_then_its_keys(tmp_path):
    path = write(
        tmp_path, METHOD_BASE.format(method='[federation.method]\nname = "raflora"\nrank_levels = [2, 4, 8, 16]')
    )
    config = load_config(path, {"federation.method": "florist", "federation.method.tau": 0.7})
    assert config.federation.method.name == "florist" and config.federation.method.tau == 0.7
    assert load_config(path, {"federation.method.weighting": "uniform"}).federation.method.rank_levels == [2, 4, 8, 16]


def test_run_folders_of_the_flat_format_are_still_read(tmp_path):
    old = METHOD_BASE.format(method='method = "florist"\ntau = 0.8\nrank_levels = []\nsfed_alpha = 0.0')
    with pytest.raises(ConfigError, match="is now an option of the method"):
        load_config(write(tmp_path, old))
    config = load_config(write(tmp_path, old), legacy=True)
    assert config.federation.method.name == "florist" and config.federation.method.tau == 0.8


def test_run_folders_before_max_client_weight_read_without_a_cap(tmp_path):
    before = METHOD_BASE.format(method='method = "raflora"')
    assert load_config(write(tmp_path, before), legacy=True).federation.max_client_weight == 1.0  # its code
    assert load_config(write(tmp_path, before)).federation.max_client_weight == 0.5  # a config file: the default
    kept = METHOD_BASE.format(method='method = "raflora"\nmax_client_weight = 0.3')
    assert load_config(write(tmp_path, kept), legacy=True).federation.max_client_weight == 0.3
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(
            ConfigError,
            match=r"^federation.max_client_weight (must be in \(0, 1\], got|= 1.5 is out of range; it must be at most 1)",
        ):
            load_config(write(tmp_path, before), {"federation.max_client_weight": float(bad)})


def test_run_folders_with_the_old_empty_partition_key_are_read_with_the_rule_they_ran(tmp_path, caplog):
    def legacy(method: str, rule: str | None):
        key = f'\nempty_partition = "{rule}"' if rule else ""
        path = tmp_path / f"{method}-{rule}" / "config.toml"
        path.parent.mkdir()
        path.write_text(METHOD_BASE.format(method=f'method = "{method}"{key}'))
        return load_config(path, legacy=True).federation.method

    assert legacy("raflora", "keep").options()["empty_partition"] == "keep"
    assert legacy("raflora", "drop").options()["empty_partition"] == "drop"
    assert legacy("raflora", None).options()["empty_partition"] == "drop"  # before the key: its code dropped
    assert legacy("carryover", "keep").name == "carryover"
    # carryover under "drop" never got the previous global update: it ran as flexlora, and reads so
    assert legacy("carryover", "drop").name == "flexlora"
    assert legacy("flexlora", "drop").name == "flexlora"
    notices = [r.getMessage() for r in caplog.records if "empty_partition" in r.getMessage()]
    assert len(notices) == 5 and all("\n" not in n for n in notices)
    assert "is now raflora's option federation.method.empty_partition" in notices[0]
    assert "raflora-keep/config.toml: federation.empty_partition" in notices[0]
    assert '"drop" read as flexlora' in notices[3]
    with pytest.raises(ConfigError, match="ran a rule that is now raflora's alone"):
        legacy("zero_pad", "keep")


@pytest.mark.parametrize(
    "method, message",
    [
        (
            'method = "carryover"\nempty_partition = "drop"',
            "federation.empty_partition does not apply to method carryover",
        ),
        ('method = "raflora"\nempty_partition = "keep"', "write federation.method.empty_partition = 'keep'"),
        (
            '[federation.method]\nname = "carryover"\nempty_partition = "keep"',
            "unknown key federation.method.empty_partition for method carryover (raflora has it); "
            "carryover's options: none",
        ),
        ('[federation.method]\nname = "raflora"\nempty_partition = "kept"', "federation.method.empty_partition"),
    ],
)
def test_a_rule_that_does_not_apply_to_the_method_is_refused(tmp_path, method, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, METHOD_BASE.format(method=method)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_raflora_keeps_or_drops_as_its_option_and_carryover_always_carries(tmp_path):
    path = write(tmp_path, METHOD_BASE.format(method='[federation.method]\nname = "raflora"\nempty_partition = "keep"'))
    assert load_config(path).federation.method.wants_previous
    assert not load_config(path, {"federation.method.empty_partition": "drop"}).federation.method.wants_previous
    assert load_config(path, {"federation.method": "carryover"}).federation.method.wants_previous
    assert not load_config(path, {"federation.method": "flexlora"}).federation.method.wants_previous


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[task]\nname = 'synthetic'\nnoise = 'loud'", "task.noise must be a number, got 'loud'"),
        (
            "[task]\nname = 'synthetic'\nbogus = 1",
            "unknown key task.bogus for task synthetic; synthetic's options: seed,",
        ),
        ("[federation]\ndropout = 1.0", "federation.dropout must be in [0, 1), got 1.0"),
        ("[federation]\nmax_norm_ratio = 0.5", "federation.max_norm_ratio must be 0 (off) or a number >= 1, got 0.5"),
        ("[run]\nrounds = 0", "run.rounds must be > 0, got 0"),
        ("[train]\nlr = inf", "train.lr must be a finite number, got inf"),
        (
            "[federation.method]\nname = 'raflora'\nrank_levels = [2, 'a']",
            "federation.method.rank_levels.1 must be an integer",
        ),
    ],
)
def test_schema_errors_name_the_dotted_key(tmp_path, extra, message):
    section = extra.split("\n", 1)[0]
    if section == "[task]":
        text = BASE.split("[task]")[0] + extra + "\n"
    else:  # merge into the existing table instead of declaring it twice
        text = BASE.replace(section, extra, 1) if section in BASE else BASE + "\n" + extra + "\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)
