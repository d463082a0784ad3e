"""A bare training loop in the trainer's hook order (sparsifiers.base), shared by the metric tests."""

import torch
from torch import nn


def sgd_for(model, sparsifier, lr=0.05, momentum=0.9):
    """SGD over the model with the sparsifier's own parameter groups (HAM keys dropped), bound to it."""
    overrides = sparsifier.parameter_group_overrides()
    special = {id(p) for group in overrides for p in group["params"]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special]}]
    groups += [{k: v for k, v in group.items() if k != "ham"} for group in overrides]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
    sparsifier.bind_optimizer(optimizer)
    return optimizer


def random_batches(steps, batch, shape, classes, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=generator), torch.randint(0, classes, (batch,), generator=generator))
            for _ in range(steps)]


def train_in_hook_order(model, sparsifier, optimizer, data, epochs, before=None, after=None, epoch_end=None,
                        train_acc=lambda epoch: 50.0 + epoch):
    """Callbacks see the step before its forward (``before``) and after ``after_step`` (``after``)."""
    for epoch in range(epochs):
        sparsifier.on_epoch_start(epoch)
        for index, (x, y) in enumerate(data):
            step = epoch * len(data) + index
            if before:
                before(step)
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            sparsifier.mask_gradients()
            if sparsifier.before_step(step):
                optimizer.step()
            sparsifier.after_step(step)
            if after:
                after(step)
        sparsifier.on_epoch_end(epoch, {"train_acc": train_acc(epoch)})
        if epoch_end:
            epoch_end(epoch)
