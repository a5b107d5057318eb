"""The hybrid attention/convolution backbone of a genome as Hugging Face models (SPEC 6).

Names are imported on first use (PEP 562), so that registering the config with
AutoConfig does not import the modelling code (see `genomec.hf_registration`).
"""

import importlib

# exported name -> submodule that defines it
_EXPORTS = {
    "ATTENTION_BACKENDS": "configuration",
    "GenomeBertConfig": "configuration",
    "as_model_genome": "configuration",
    "BackendUnavailable": "attention_backend",
    "attention_function": "attention_backend",
    "GenomeBertPreTrainedModel": "modeling",
    "GenomeBertModel": "modeling",
    "GenomeBertForMaskedLM": "modeling",
    "GenomeBertForSequenceClassification": "modeling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
