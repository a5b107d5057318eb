"""genomec: attention genomes -> networkx IR -> kernels; hybrid models; search.

`import genomec` is light (no transformers): the Hugging Face classes are exported
lazily, and registered with transformers' Auto classes as soon as those are used
(see `genomec.hf_registration`).
"""

from genomec.hf_registration import install as _install_auto_registration

_install_auto_registration()

# Hugging Face classes, imported on first use (PEP 562).
_MODEL_EXPORTS = (
    "GenomeBertConfig",
    "GenomeBertModel",
    "GenomeBertForMaskedLM",
    "GenomeBertForSequenceClassification",
)


def __getattr__(name):
    if name in _MODEL_EXPORTS:
        from genomec import models

        return getattr(models, name)
    raise AttributeError(f"module 'genomec' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MODEL_EXPORTS))
