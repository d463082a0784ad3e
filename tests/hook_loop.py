"""Training loops for tests, built on the step engine (``ham_bench.engine.step.train_step``): no copy of the hook order."""

import torch

from ham_bench.engine.step import train_step


def sgd_for(model, sparsifier, lr=0.05, momentum=0.9, weight_decay=0.0):
    """SGD over the model with the sparsifier's own parameter groups (HAM keys dropped), bound to it."""
    overrides = sparsifier.parameter_groups()
    special = {id(p) for group in overrides for p in group["params"]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "weight_decay": weight_decay}]
    groups += [{k: v for k, v in group.items() if k != "ham"} for group in overrides]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    sparsifier.bind_optimizer(optimizer)
    return optimizer


def random_batches(steps, batch, shape, classes, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=generator), torch.randint(0, classes, (batch,), generator=generator))
            for _ in range(steps)]


def run_epochs(model, sparsifier, optimizer, data, epochs, first_epoch=0, before=None, on_step=None, on_epoch=None,
               train_acc=None):
    """Epochs of ``train_step`` over ``data`` (a list of batches) with the epoch hooks around them.

    ``before(step)`` runs before each step, ``on_step(step, record)`` after it, ``on_epoch(epoch)`` after
    ``on_epoch_end``, which gets the epoch's real training accuracy unless ``train_acc(epoch)`` overrides it.
    """
    for epoch in range(first_epoch, epochs):
        sparsifier.on_epoch_start(epoch)
        correct = seen = 0
        for index, (x, y) in enumerate(data):
            step = epoch * len(data) + index
            if before is not None:
                before(step)
            record = train_step(model, optimizer, sparsifier, x, y, step)
            correct += int((record.logits.argmax(1) == y).sum())
            seen += len(y)
            if on_step is not None:
                on_step(step, record)
        accuracy = 100.0 * correct / seen if train_acc is None else train_acc(epoch)
        sparsifier.on_epoch_end(epoch, {"train_acc": accuracy})
        if on_epoch is not None:
            on_epoch(epoch)


def train_in_hook_order(model, sparsifier, optimizer, data, epochs, before=None, after=None, epoch_end=None,
                        train_acc=lambda epoch: 50.0 + epoch):
    """``run_epochs`` with step callbacks that take only the step."""
    run_epochs(model, sparsifier, optimizer, data, epochs, before=before,
               on_step=(lambda step, record: after(step)) if after else None, on_epoch=epoch_end,
               train_acc=train_acc)
