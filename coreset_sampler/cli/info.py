"""``coreset-sr info``: what a scores file holds (count, scorer, values, how its dataset was cut, provenance)."""
from __future__ import annotations

from ..layout import DATA_META
from .checks import load_scores

__all__ = ["cmd_info", "info_text"]


def info_text(scores, path) -> str:
    """What ``coreset-sr info`` prints about ``scores`` (read from ``path``): one field per line."""
    import numpy as np

    md = scores.metadata
    vals = scores.values[scores.valid_indices]
    spec = md.get(DATA_META) if isinstance(md.get(DATA_META), dict) else None
    lines = [f"{path}",
             f"  count          {len(scores)} ({len(scores.valid_indices)} scored, {len(scores.failed)} failed)",
             f"  scorer         {_scorer_text(md)}",
             f"  scale          {md.get('scale', (spec or {}).get('scale', 'n/a'))}",
             f"  fingerprint    {md.get('dataset_fingerprint', scores.fingerprint)}"
             + ("" if md.get("dataset_fingerprint", scores.fingerprint) == scores.fingerprint
                else f" (keys now give {scores.fingerprint}: file edited?)")]
    if vals.size:
        q = np.percentile(vals, [0, 50, 100])
        lines.append(f"  values         min {q[0]:.6g}, median {q[1]:.6g}, max {q[2]:.6g}, mean {vals.mean():.6g}")
    else:
        lines.append("  values         none scored")
    if scores.failed:
        first = next(iter(scores.failed.items()))
        name = scores.keys[first[0]] if scores.keys else first[0]
        lines.append(f"  failed         {len(scores.failed)}, first: {name}: {first[1]}")
    if spec:
        if spec.get("kind") == "subimages":
            lines.append(f"  data           sub-images {spec.get('crop')}x{spec.get('crop')}, step {spec.get('step')} "
                         f"of {', '.join(spec.get('roots', []))}")
        else:
            lr = f" (LR: {spec['lr_root']})" if spec.get("lr_root") else ""
            lines.append(f"  data           whole images of {', '.join(spec.get('roots', []))}{lr}")
    if scores.keys:
        lines.append(f"  keys           {scores.keys[0]} ... {scores.keys[-1]}")
    lines.append(f"  created at     {md.get('created_at', 'n/a')} (coreset-sampler {md.get('library_version', '?')})")
    if md.get("model_digest"):
        lines.append(f"  model digest   {md['model_digest'][:16]}")
    prov = md.get("provenance")
    if isinstance(prov, dict):
        n = len(prov.get("sources") or {}) + len(prov.get("lr_sources") or {})
        lines.append(f"  provenance     scorer {prov.get('scorer')}, degradation {prov.get('degradation', 'n/a')}, "
                     f"{n} source file(s) fingerprinted (checked by select / export / plot --grid)")
    else:
        lines.append(f"  provenance     none (format_version {scores.format_version or '1'}: written before "
                     f"provenance; rescore with --rescore to check it against its images)")
    return "\n".join(lines)


def _scorer_text(md: dict) -> str:
    s = md.get("scorer", "unknown")
    if s == "loss":
        return f"{md.get('model', 'model')} loss ({md.get('loss', 'mse')}, channels {md.get('channels', '?')})"
    return str(s)


def cmd_info(args) -> int:
    """``coreset-sr info``: what a scores file holds."""
    scores = load_scores(args.scores)
    print(info_text(scores, args.scores))
    return 0
