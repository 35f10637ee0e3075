"""A stand-in for Flower's Grid that runs this process's ClientApp: the ServerApp's code is tested
without Ray or a SuperLink, and a reply can be broken, withheld or answered by "the SuperLink"."""

from __future__ import annotations

from flwr.app import Error, Message


class LocalGrid:
    """A Grid whose nodes are this process's ClientApp; ``tamper(client, msg, reply)`` may break a
    train reply. Like Flower's grids it gives each pushed message an id, and replies answer that id."""

    def __init__(self, client_app, num_clients: int, tamper=None, run_config=None, node_configs=None) -> None:
        from flwr.app import Context, RecordDict

        self.app, self.tamper = client_app, tamper
        node_configs = node_configs or [{"partition-id": i, "num-partitions": num_clients} for i in range(num_clients)]
        self.clients = {7000 + 13 * i: i for i in range(len(node_configs))}  # node ids are not client indices
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config=dict(node_configs[i]),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for n, i in self.clients.items()
        }
        self.replies: dict[str, object] = {}
        self.sent: list = []

    def get_node_ids(self):
        return list(self.clients)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as ex:  # what a SuperNode sends back when its ClientApp raises
                reply = Message(Error(code=2, reason=str(type(ex)) + ":<'" + str(ex) + "'>"), reply_to=msg)
            if self.tamper is not None and msg.metadata.message_type == "train":
                reply = self.tamper(self.clients[node], msg, reply)
            if reply is not None:
                self.replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        # replies come back in any order
        return [self.replies.pop(i) for i in reversed(list(message_ids)) if i in self.replies]

    def send_and_receive(self, messages, timeout=None):
        return self.pull_messages(self.push_messages(messages))
