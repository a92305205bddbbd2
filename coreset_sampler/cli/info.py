"""``coreset-sr info``: what a scores file holds (count, scorer, values, how its dataset was cut, provenance).

The file is checked and summarised by :func:`~coreset_sampler.scores_summary.summarize_scores`, which
streams the keys: ``info`` on a large file needs about half its size in memory, not several times it.
"""
from __future__ import annotations

from ..layout import DATA_META

__all__ = ["cmd_info", "info_text"]


def info_text(scores, path) -> str:
    """What ``coreset-sr info`` prints about ``scores`` (a :class:`~coreset_sampler.scores_summary.ScoresSummary`
    of ``path``): one field per line."""
    md = scores.metadata
    spec = md.get(DATA_META) if isinstance(md.get(DATA_META), dict) else None
    lines = [f"{path}",
             f"  count          {scores.n} ({scores.scored} scored, {len(scores.failed)} failed)",
             f"  scorer         {_scorer_text(md)}",
             f"  scale          {md.get('scale', (spec or {}).get('scale', 'n/a'))}",
             f"  fingerprint    {md.get('dataset_fingerprint', scores.fingerprint)}"
             + ("" if md.get("dataset_fingerprint", scores.fingerprint) == scores.fingerprint
                else f" (keys now give {scores.fingerprint}: file edited?)")]
    if scores.stats is not None:
        lo, mid, hi, mean = scores.stats
        lines.append(f"  values         min {lo:.6g}, median {mid:.6g}, max {hi:.6g}, mean {mean:.6g}")
    else:
        lines.append("  values         none scored")
    if scores.failed:
        first = min(scores.failed.items())
        name = first[0] if scores.first_failed_key is None else scores.first_failed_key
        lines.append(f"  failed         {len(scores.failed)}, first: {name}: {first[1]}")
    if spec:
        if spec.get("kind") == "subimages":
            lines.append(f"  data           sub-images {spec.get('crop')}x{spec.get('crop')}, step {spec.get('step')} "
                         f"of {', '.join(spec.get('roots', []))}")
        else:
            lr = f" (LR: {spec['lr_root']})" if spec.get("lr_root") else ""
            lines.append(f"  data           whole images of {', '.join(spec.get('roots', []))}{lr}")
    if scores.first_key is not None:
        lines.append(f"  keys           {scores.first_key} ... {scores.last_key}")
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
    from ..scores_summary import summarize_scores

    print(info_text(summarize_scores(args.scores), args.scores))
    return 0
