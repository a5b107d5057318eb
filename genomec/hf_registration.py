"""Register the genome-bert classes with transformers' Auto classes, without importing
transformers up front.

`import genomec` must stay fast (the CLI's `check`, `show` and `ops` never touch models),
but `import genomec; AutoModel.from_pretrained(saved_dir)` must work. So `install()` adds
an import hook: when transformers' auto modules finish loading (that is, when someone
uses AutoConfig or an AutoModel class), the genome-bert config and models are registered
with them. If they are already loaded, registration happens at once.
"""

from __future__ import annotations

import importlib.machinery
import sys

CONFIGURATION_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _register_config(configuration_auto) -> None:
    from genomec.models.configuration import GenomeBertConfig

    configuration_auto.AutoConfig.register(GenomeBertConfig.model_type, GenomeBertConfig, exist_ok=True)


def _register_models(modeling_auto) -> None:
    from genomec.models.configuration import GenomeBertConfig
    from genomec.models.modeling import GenomeBertForMaskedLM, GenomeBertForSequenceClassification, GenomeBertModel

    for auto_name, model_class in (
        ("AutoModel", GenomeBertModel),
        ("AutoModelForMaskedLM", GenomeBertForMaskedLM),
        ("AutoModelForSequenceClassification", GenomeBertForSequenceClassification),
    ):
        getattr(modeling_auto, auto_name).register(GenomeBertConfig, model_class, exist_ok=True)


# module name -> what to do once it has loaded (modeling_auto imports configuration_auto,
# so the config is always registered before the models).
_ON_LOAD = {CONFIGURATION_AUTO: _register_config, MODELING_AUTO: _register_models}


class _RegisterAfterImport:
    """A meta-path finder that lets the normal finder load a module, then registers."""

    def find_spec(self, fullname, path, target=None):
        register = _ON_LOAD.get(fullname)
        if register is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register(module)

        spec.loader.exec_module = exec_then_register
        return spec


_FINDER = _RegisterAfterImport()


def install() -> None:
    """Register now with whatever auto modules are loaded; hook the others (idempotent)."""
    for name, register in _ON_LOAD.items():
        if name in sys.modules:
            register(sys.modules[name])
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def register_all() -> None:
    """Load transformers' auto modules (which registers the genome-bert classes)."""
    install()
    for name in _ON_LOAD:
        importlib.import_module(name)
