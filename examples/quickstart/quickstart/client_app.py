"""quickstart: a Flower ClientApp (train and evaluate handlers)."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .task import Net, load_data, num_examples, test, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    trainloader, _ = load_data(context.node_config)
    loss = train(net, trainloader, 1, float(str(msg.content.config_records["config"].get("lr", 0.1))))
    metrics = MetricRecord({"train_loss": loss, "num-examples": num_examples(trainloader)})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    _, testloader = load_data(context.node_config)
    loss, accuracy = test(net, testloader)
    n = num_examples(testloader)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": n})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
