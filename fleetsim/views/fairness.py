"""Fairness per device class, from a run's device records: who got to contribute, what
they trained, and how well the global model serves each class's own data."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from fleetsim.zoo.model import block_of


def trained_blocks(plan: str) -> int:
    """How many blocks a plan string (devices.jsonl's `plan`) trains."""
    train = plan.split(";")[0].removeprefix("train=")
    return sum(block_of(group) is not None for group in train.split(","))


def fairness(devices: Sequence[Mapping[str, Any]],
             class_accuracy: Mapping[str, float | None]) -> dict[str, Any]:
    """Per class: device-rounds selected and contributed (status ok), the class's share
    of the selected that contributed and of all contributions, the blocks its
    contributions trained (mean, and how often each count), and the final global model's
    accuracy on the class's own test windows; then the gap between the best and the
    worst class on each measure. A class of `class_accuracy` none of whose devices was
    ever selected is there too (selected 0, share of selected None): the class the fleet
    served least must not drop out of the table and the accuracy gap."""
    by_class: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in devices:
        by_class[record["device_class"]].append(record)
    contributions = sum(r["status"] == "ok" for r in devices)
    classes = {}
    for name in sorted(set(by_class) | set(class_accuracy)):
        ok = [r for r in by_class[name] if r["status"] == "ok"]
        blocks = [trained_blocks(r["plan"]) for r in ok]
        selected = len(by_class[name])
        classes[name] = {
            "selected": selected,
            "contributed": len(ok),
            "contributed_share_of_selected": len(ok) / selected if selected else None,
            "share_of_contributions": len(ok) / contributions if contributions else 0.0,
            "blocks_trained_mean": sum(blocks) / len(blocks) if blocks else 0.0,
            "blocks_trained": dict(sorted(Counter(blocks).items())),
            "accuracy": class_accuracy.get(name),
        }
    return {"classes": classes, **{f"gap_{key}": _gap(classes, key) for key in
                                   ("contributed_share_of_selected", "accuracy")}}


def _gap(classes: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    values = [c[key] for c in classes.values() if c[key] is not None]
    return max(values) - min(values) if values else None
