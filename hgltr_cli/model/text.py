"""Text prototypes z_t: prompts per class, the frozen text encoder run once, a safetensors cache."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from hgltr_cli.errors import HgltrError

# named templates for plain class-name lists (a hierarchy renders its own, with ancestors)
# (same names as hgltr_cli.hierarchy's templates; without a hierarchy "paper" has no ancestors)
NAME_TEMPLATES = {
    "paper": "a photo of a {name}",
    "plain": "a photo of {name}",
}
CACHE_FORMAT = 1


def prompts_for(classes: Any, template: str = "paper") -> list[str]:
    """One prompt per class: `classes.prompts(template)` for a hierarchy, else from class names.

    For names, `template` is a named template (paper, plain) or a format string with `{name}`
    (or `{class}`, `{}`); hierarchy fields ({ancestors}, {parent}, ...) render empty.
    """
    if hasattr(classes, "prompts") and callable(classes.prompts):
        return [str(p) for p in classes.prompts(template)]
    if isinstance(classes, (str, bytes)):
        raise HgltrError("classes must be a hierarchy or a list of class names, not one string.")
    names = [str(c) for c in classes]
    if not names:
        raise HgltrError("no classes: the class list is empty.")
    fmt = NAME_TEMPLATES.get(template, template)
    if "{" not in fmt:
        raise HgltrError(f"prompt template {template!r} is not a known name ({', '.join(NAME_TEMPLATES)}) "
                         "and has no {name} placeholder.",
                         "Example: --set model.prompt_template='a photo of a {name}, a kind of animal.'")
    out = []
    for n in names:
        try:
            values = {"class": n, "name": n, "id": n, "ancestors": "", "parent": "", "path": n, "top": ""}
            text = fmt.replace("{}", n).format_map(values)
            out.append(" ".join(text.replace("()", "").split()))
        except (KeyError, IndexError, ValueError) as exc:
            raise HgltrError(f"prompt template {template!r} cannot be filled: {exc}.",
                             "Placeholders: {name} (or {class}, {}), {ancestors}, {parent}, {path}, {top}.") from None
    return out


def cache_key(model_name: str, weights_id: str, quick_gelu: bool, prompts: Sequence[str]) -> str:
    blob = json.dumps({"v": CACHE_FORMAT, "model": model_name, "weights": weights_id, "quick_gelu": quick_gelu,
                       "prompts": list(prompts)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def encode_prompts(backbone, prompts: Sequence[str], device: torch.device | str = "cpu",
                   cache_dir: Optional[str | Path] = None, batch_size: int = 256) -> torch.Tensor:
    """z_t (K x d_t, float32): the frozen text encoder's projected output, unnormalised.

    Cached as safetensors under `cache_dir` keyed by model, weights and prompts; random-init
    backbones (weights 'none') are never cached (their weights are not identified by a file).
    """
    from safetensors.torch import load_file, save_file

    path = None
    if cache_dir is not None and backbone.weights_id != "none":
        key = cache_key(backbone.name, backbone.weights_id, backbone.quick_gelu, prompts)
        path = Path(cache_dir) / f"text-{key[:32]}.safetensors"
        if path.is_file():
            try:
                z = load_file(str(path))["z_t"]
                if z.shape[0] == len(prompts):
                    return z.to(device)
            except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed
                pass
    model = backbone.model
    chunks = []
    for i in range(0, len(prompts), batch_size):
        tokens = backbone.tokenizer(list(prompts[i:i + batch_size])).to(device)
        chunks.append(model.encode_text(tokens).float())
    z = torch.cat(chunks)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"z_t": z.cpu().contiguous()}, str(tmp),
                  metadata={"model": backbone.name, "weights": backbone.weights_id, "classes": str(len(prompts))})
        tmp.replace(path)
    return z
