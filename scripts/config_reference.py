"""Rewrite the config reference in docs/usage.md from the code (raflora.config_doc)."""

from pathlib import Path

from raflora.config_doc import with_reference

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"

if __name__ == "__main__":
    USAGE.write_text(with_reference(USAGE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the config reference into {USAGE}")
