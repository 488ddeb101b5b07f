"""Loading a trained Riemannian model for the tools (examples/generate.py, examples/semantic_map.py).

    theta, cfg, spec, tok, ck = load_model("runs/riemann")     # run directory (newest checkpoint) or ckpt_*.npz
"""
from pathlib import Path

from ..core.config import from_dict
from ..core.errors import CheckpointError, ConfigError, DataError
from ..core.params import ParamSpec
from ..data.tokenizer import Tok
from ..models import riemann
from ..training.checkpoint import load_checkpoint


def find_tokenizer(ck):
    """The Tok a checkpoint was trained with: DIR/tokenizers/*/ (DIR = its recorded tokenizer_dir or its own
    directory) whose hash equals the checkpoint's."""
    want = ck.meta.get("tokenizer", "")
    dirs = [Path(ck.extra["tokenizer_dir"])] if ck.extra.get("tokenizer_dir") else []
    dirs.append(Path(ck.path).parent)
    for d in dirs:
        for sub in sorted((d / "tokenizers").glob("*/")) if (d / "tokenizers").is_dir() else []:
            try:
                tok = Tok.load(sub)
            except DataError:
                continue
            if tok.hash == want:
                return tok
    raise CheckpointError(f"no tokenizer with hash {str(want)[:12]} under {' or '.join(str(d) for d in dirs)}"
                          f"/tokenizers; keep the run directory together with its checkpoints")


def checkpoint_config(ck):
    """The RiemannConfig recorded in a loaded checkpoint (CheckpointError if unreadable)."""
    try:
        return from_dict(riemann.RiemannConfig, dict(ck.meta.get("cfg", {})))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ck.path} has an unreadable model config ({e}); use the geolm version "
                              f"that wrote it") from None


def load_model(path):
    """Run directory or ckpt_*.npz of a Riemannian model -> (theta, cfg, spec, tok, checkpoint)."""
    ck = load_checkpoint(path, expect_family="riemann")
    cfg = checkpoint_config(ck)
    spec = ParamSpec(riemann.param_shapes(cfg))
    if spec.size != ck.theta.shape[0]:
        raise CheckpointError(f"checkpoint {ck.path} holds {ck.theta.shape[0]} parameters but its config needs "
                              f"{spec.size}; the file does not match its config")
    return ck.theta, cfg, spec, find_tokenizer(ck), ck
