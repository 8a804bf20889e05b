"""Training state that is not weights, without pickle: optimizer and LR-scheduler state as safetensors + JSON,
RNG states (torch, numpy, python) as plain JSON, and an exact JSON encoding for the odd values they hold."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vtok.training.checkpoint import CheckpointError

OPTIMIZER_FORMAT = "vtok.optimizer_state"
SCHEDULER_FORMAT = "vtok.scheduler_state"
_TUPLE, _FLOAT, _DICT, _TENSOR = "__tuple__", "__float__", "__dict__", "__tensor__"
_TAGS = (_TUPLE, _FLOAT, _DICT, _TENSOR)


def encode_state(value: Any, where: str = "state") -> Any:
    """Nested state (dicts, lists, tuples, scalars, small tensors) as JSON that decode_state inverts exactly.

    Anything else is a TypeError naming `where`.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {_FLOAT: repr(float(value))}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_complex() or t.is_quantized:
            raise TypeError(f"{where}: a {t.dtype} tensor cannot be stored as JSON")
        # Every real dtype widens exactly to a Python float or int, and narrows back exactly.
        return {_TENSOR: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                          "data": encode_state(t.flatten().tolist(), where)}}
    if isinstance(value, (list, tuple)):
        items = [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not any(k in _TAGS for k in value):
            return {k: encode_state(v, f"{where}.{k}") for k, v in value.items()}
        return {_DICT: [[encode_state(k, f"{where} key"), encode_state(v, f"{where}.{k}")] for k, v in value.items()]}
    if isinstance(value, np.generic):
        return encode_state(value.item(), where)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored as JSON")


def decode_state(value: Any) -> Any:
    """The inverse of encode_state."""
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag == _TUPLE:
            return tuple(decode_state(v) for v in body)
        if tag == _FLOAT:
            return float(body)
        if tag == _DICT:
            return {decode_state(k): decode_state(v) for k, v in body}
        if tag == _TENSOR:
            dtype = getattr(torch, body["dtype"])
            return torch.tensor(decode_state(body["data"]), dtype=dtype).reshape(body["shape"])
    return {k: decode_state(v) for k, v in value.items()}


# ------------------------------------------------------------------------------------ optimizer state


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() as tensors (for OPTIMIZER_TENSORS) and JSON (for OPTIMIZER_META), no pickle.

    Per-parameter tensors are named "state.<param>.<key>" (AdamW: step, exp_avg, exp_avg_sq); param_groups
    and non-tensor values go to the JSON. load_optimizer_state inverts it bit for bit.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    entries: list[dict[str, Any]] = []
    for param, per_param in sd["state"].items():
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor) and isinstance(key, str):
                name = f"state.{param}.{key}"
                if name in tensors:
                    raise ValueError(f"optimizer state: two tensors would be named {name!r}")
                tensors[name] = value.detach().cpu().contiguous()
                names[key] = name
            else:
                values[key] = value
        entries.append({"param": encode_state(param), "tensors": names,
                        "values": encode_state(values, f"optimizer state {param}")})
    extra = {k: v for k, v in sd.items() if k not in ("state", "param_groups")}
    meta = {
        "format": OPTIMIZER_FORMAT,
        "version": 1,
        "optimizer": type(optimizer).__name__,
        "state": entries,
        "param_groups": encode_state(sd["param_groups"], "optimizer param_groups"),
        "extra": encode_state(extra, "optimizer state_dict"),
    }
    return tensors, meta


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Load what optimizer_state_to_tensors produced into `optimizer` (one over the same params, in order)."""
    if meta.get("format") != OPTIMIZER_FORMAT:
        raise CheckpointError(f"optimizer state has format {meta.get('format')!r}, not {OPTIMIZER_FORMAT!r}")
    if meta.get("optimizer") != type(optimizer).__name__:
        raise CheckpointError(
            f"optimizer state was saved from {meta.get('optimizer')}, cannot load it into {type(optimizer).__name__}"
        )
    state: dict[Any, dict[str, Any]] = {}
    for entry in meta["state"]:
        per_param = dict(decode_state(entry["values"]))
        for key, name in entry["tensors"].items():
            if name not in tensors:
                raise CheckpointError(f"optimizer state: tensor {name!r} is missing")
            per_param[key] = tensors[name]
        state[decode_state(entry["param"])] = per_param
    sd = {"state": state, "param_groups": decode_state(meta["param_groups"]), **decode_state(meta["extra"])}
    optimizer.load_state_dict(sd)


def scheduler_state_to_json(scheduler: Any) -> dict[str, Any]:
    """An LR scheduler's state_dict as JSON (for SCHEDULER); load_scheduler_state inverts it exactly."""
    return {"format": SCHEDULER_FORMAT, "version": 1, "scheduler": type(scheduler).__name__,
            "state": encode_state(scheduler.state_dict(), "scheduler state_dict")}


def load_scheduler_state(scheduler: Any, data: Mapping[str, Any]) -> None:
    """Load what scheduler_state_to_json produced into `scheduler`."""
    if data.get("format") != SCHEDULER_FORMAT or data.get("scheduler") != type(scheduler).__name__:
        raise CheckpointError(
            f"scheduler state is {data.get('format')!r} from {data.get('scheduler')!r}, "
            f"cannot load it into {type(scheduler).__name__}"
        )
    scheduler.load_state_dict(decode_state(data["state"]))


# ------------------------------------------------------------------------------------------ RNG state


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as plain JSON (stored in STATE under a key of the caller's).

    torch's CPU generator as its bytes (a list of ints), each CUDA device's likewise when CUDA is available,
    numpy's global bit generator state, python `random`'s getstate() as nested lists.
    """
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": {**np_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                        for k, v in np_state["state"].items()}},
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() returned; CUDA states apply to the devices present (none on a CPU machine)."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    np_state = dict(state["numpy"])
    inner = dict(np_state["state"])
    if isinstance(inner.get("key"), list):
        inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
    np_state["state"] = inner
    np.random.set_state(np_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available():
        for index, saved in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.tensor(saved, dtype=torch.uint8), index)
