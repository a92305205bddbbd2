"""The trainer plug-ins share the ``coreset:`` block through neutral modules, by public names only.

Read from the source (no traiNNer-redux, torch or basicsr import needed): the traiNNer-redux plug-in
imports nothing from the BasicSR plug-in (``integrations/basicsr``); what the two share (the block's
parsing, the scores lifecycle with the block's wording) lives in ``integrations/block.py`` and
``integrations/trainset.py``, which import neither basicsr nor traiNNer nor either plug-in; and every
name a plug-in imports from a neutral module is public (no leading underscore), listed in that module's
``__all__`` and documented, so a private helper can change without breaking another trainer's plug-in.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "coreset_sampler"
INTEGRATIONS = PACKAGE / "integrations"
PLUGINS = {"basicsr": INTEGRATIONS / "basicsr", "redux": INTEGRATIONS / "redux"}
NEUTRAL = {"coreset_sampler.integrations.block": INTEGRATIONS / "block.py",
           "coreset_sampler.integrations.trainset": INTEGRATIONS / "trainset.py"}
#: names each file used to import from basicsr/coreset.py, still importable there (users and tests import them)
BASICSR_BLOCK_NAMES = [
    "CORESET_KEYS", "BUILTIN_SCORERS", "CoresetConfigError", "CoresetOptions", "parse_coreset_block",
    "validate_options", "basicsr_keys", "BasicSRScoringView", "align_scores", "build_coreset_dataset",
    "write_meta_info", "implied_epochs", "step_matched_epochs", "check_pair_sizes", "check_outside_dataroots",
    "basicsr_provenance", "expected_provenance", "RESCORE_FIX", "subimage_folder", "SUBIMAGE_DEFAULTS",
    "DescribedDataset", "uniform_scores", "WHERE", "rank_and_world", "rank0_decides", "on_rank0", "barrier",
    "load_scores_file", "make_block_scorer"]


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(absolute module, name)`` for every ``from X import name`` / ``import X`` in ``path`` (any level)."""
    here = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)[:-1]  # the package holding it
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out += [(mod, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return out


def _plugin_imports(plugin: str) -> list[tuple[str, str, str]]:
    """``(file, module, name)`` for every import in the plug-in ``plugin`` (``basicsr`` or ``redux``)."""
    return [(p.name, m, n) for p in sorted(PLUGINS[plugin].glob("*.py")) for m, n in _imports(p)]


def _targets(module: str, name: str) -> set[str]:
    """The modules an import reaches: ``module`` itself and ``module.name`` (``from . import compat``)."""
    return {module, f"{module}.{name}"} if name else {module}


def test_redux_imports_nothing_from_the_basicsr_plugin():
    found = [f"{f}: {m}.{n}" for f, m, n in _plugin_imports("redux")
             if any(t.startswith("coreset_sampler.integrations.basicsr") or t.split(".")[0] == "basicsr"
                    for t in _targets(m, n))]
    assert not found, f"the traiNNer-redux plug-in imports the BasicSR plug-in (or basicsr): {found}"


def test_the_shared_block_is_neutral():
    for module, path in NEUTRAL.items():
        for m, n in _imports(path):
            for t in _targets(m, n):
                assert t.split(".")[0] not in ("basicsr", "traiNNer", "torch"), f"{module} imports {t}"
                assert not t.startswith(("coreset_sampler.integrations.basicsr",
                                         "coreset_sampler.integrations.redux")), f"{module} imports {t}"


def test_both_plugins_build_on_the_neutral_block():
    for plugin in PLUGINS:
        names = {n for _, m, n in _plugin_imports(plugin) if m in NEUTRAL}
        # the shared parts are found at all (this test would pass vacuously if the imports moved)
        assert {"CoresetConfigError", "WHERE", "block_scores", "make_block_scorer"} <= names, (plugin, names)


def test_plugins_use_no_private_name_of_the_neutral_block():
    private = [f"{plugin}/{f}: {m}.{n}" for plugin in PLUGINS for f, m, n in _plugin_imports(plugin)
               if m in NEUTRAL and n.startswith("_")]
    assert not private, f"a plug-in imports private helpers of the shared block: {private}"


def test_every_shared_name_is_exported_and_documented():
    pytest.importorskip("torch")
    for plugin in PLUGINS:
        for f, m, n in _plugin_imports(plugin):
            if m not in NEUTRAL:
                continue
            module = importlib.import_module(m)
            assert n in module.__all__, f"{plugin}/{f} imports {m}.{n}, which is not in its __all__"
            obj = getattr(module, n)
            if callable(obj):
                assert (obj.__doc__ or "").strip(), f"{m}.{n} (used by {plugin}/{f}) has no docstring"


def test_the_basicsr_block_names_are_still_importable_where_they_were():
    pytest.importorskip("torch")
    cs = importlib.import_module("coreset_sampler.integrations.basicsr.coreset")
    missing = [n for n in BASICSR_BLOCK_NAMES if not hasattr(cs, n)]
    assert not missing, f"no longer importable from integrations.basicsr.coreset: {missing}"
    block = importlib.import_module("coreset_sampler.integrations.block")
    assert cs.CoresetConfigError is block.CoresetConfigError and cs.parse_coreset_block is block.parse_coreset_block
