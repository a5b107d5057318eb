"""`genomec train mlm|glue`: pre-train a genome's model with masked language modelling, or
fine-tune one on a GLUE task. Thin wrappers over `genomec.models.training`, imported only
when a training command runs (transformers is slow to import; other commands stay fast).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from genomec.errors import UsageError
from genomec.fileio import output_folder_problem
from genomec.genome import CONFIG_LIMITS, ModelGenome, load_genome
from genomec.genome.schema import DEFAULT_CONFIG

# Keys of the results printed for people (all of them go to --json, except the settings).
MLM_SUMMARY = ("initial_loss", "final_loss", "initial_accuracy", "final_accuracy", "steps", "tokens_per_second")


def register(sub) -> None:
    p = sub.add_parser("train", help="pre-train (mlm) or fine-tune (glue) a genome's model")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)

    mlm = tasks.add_parser("mlm", help="masked language modelling on a plain-text corpus")
    mlm.add_argument("--genome", required=True, metavar="G", help="a model genome (or one attention graph, used for every layer)")
    mlm.add_argument("--corpus", metavar="PATH", help="UTF-8 text file or folder (default: Python's own documentation)")
    mlm.add_argument("--tokenizer", metavar="DIR", help="a saved tokenizer (default: train a WordPiece tokenizer on the corpus)")
    mlm.add_argument("--steps", type=int, required=True, metavar="S")
    mlm.add_argument("--out", metavar="DIR", help="model directory to write (default: runs/mlm-<genome file name>)")
    mlm.add_argument("--seq-len", type=int, default=128)
    mlm.add_argument("--batch-size", type=int, default=8)
    mlm.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (linear warmup, then linear decay)")
    mlm.add_argument("--warmup", type=float, default=0.1, metavar="FRACTION", help="fraction of the steps spent warming up")
    mlm.add_argument("--vocab-size", type=int, default=8192, help="of a tokenizer trained here")
    mlm.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="default: a tenth of the steps, at most 50")
    _common(mlm)
    for size in ("hidden-size", "num-heads", "intermediate-size"):
        mlm.add_argument(f"--{size}", type=int, help="override the genome's config")
    mlm.set_defaults(handler=handle_mlm)

    glue = tasks.add_parser("glue", help="fine-tune a pre-trained model on a GLUE task; report its metric")
    glue.add_argument("--task", required=True, metavar="T", help="cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")
    glue.add_argument("--data", required=True, metavar="DIR", help="GLUE directory in the standard TSV layout")
    glue.add_argument("--model", required=True, metavar="DIR", help="a model directory written by `genomec train mlm`")
    glue.add_argument("--out", metavar="DIR", help="fine-tuned model directory (default: MODEL/glue/TASK)")
    glue.add_argument("--epochs", type=float, default=3.0)
    glue.add_argument("--steps", type=int, metavar="S", help="train for S steps instead of --epochs")
    glue.add_argument("--seq-len", type=int, default=128)
    glue.add_argument("--batch-size", type=int, default=32)
    glue.add_argument("--lr", type=float, default=1e-4)
    glue.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="default: a tenth of the steps, at most 200")
    glue.add_argument("--skip-bad-rows", action="store_true", help="skip malformed TSV rows instead of stopping")
    _common(glue)
    glue.set_defaults(handler=handle_glue)


def _common(p) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "reference", "triton"), default="auto", help="attention backend")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line (the last line)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on failure")


def _quiet_libraries(command: str = "train") -> None:
    """Our progress bar and messages only; the attention backend's choice is shown."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    backend_log = logging.getLogger("genomec.models")
    if not backend_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"genomec {command}: %(message)s"))
        backend_log.addHandler(handler)
        backend_log.setLevel(logging.INFO)


def _between(low, high):
    return (lambda n: low <= n <= high), f"in {low}..{high}"


# option -> (test, what it must be). Every numeric option of either task is checked here,
# before any work, and refused with exit 2 naming it; one a task lacks, or left unset, is skipped.
OPTION_RULES = {
    "steps": ((lambda n: n >= 1), "at least 1"),
    "seq_len": _between(8, CONFIG_LIMITS["max_position_embeddings"]),  # [CLS], [SEP] and some text
    "batch_size": _between(1, 65536),
    "lr": ((lambda x: 0 < x < 1), "a positive number below 1"),  # refuses NaN and infinities too
    "warmup": ((lambda x: 0 <= x < 1), "a fraction of the steps, in [0, 1)"),
    "epochs": ((lambda x: 0 < x < math.inf), "a positive finite number"),
    "vocab_size": _between(32, CONFIG_LIMITS["vocab_size"]),
    "checkpoint_every": ((lambda n: n >= 1), "at least 1"),
    "hidden_size": _between(1, CONFIG_LIMITS["hidden_size"]),
    "num_heads": _between(1, CONFIG_LIMITS["num_heads"]),
    "intermediate_size": _between(1, CONFIG_LIMITS["intermediate_size"]),
    "seed": _between(0, 2**32 - 1),
}


def check_options(args) -> None:
    for name, (ok, what) in OPTION_RULES.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise UsageError(f"--{name.replace('_', '-')} must be {what}, got {value}")
    if getattr(args, "out", None):
        problem = output_folder_problem(args.out)
        if problem:
            raise UsageError(f"--out {args.out}: {problem}")


def check_model_sizes(args) -> None:
    """The sizes given on the command line with the genome's own: heads that divide the
    hidden size, sequences its position embeddings hold. A bad genome file is named here."""
    genome = load_genome(args.genome)
    config = genome.config if isinstance(genome, ModelGenome) else DEFAULT_CONFIG
    hidden, heads = args.hidden_size or config["hidden_size"], args.num_heads or config["num_heads"]
    if hidden % heads:
        raise UsageError(f"hidden size {hidden} is not divisible by {heads} heads (from --hidden-size, --num-heads or {args.genome})")
    if args.seq_len > config["max_position_embeddings"]:
        raise UsageError(f"--seq-len {args.seq_len} exceeds max_position_embeddings {config['max_position_embeddings']} of {args.genome}")


def handle_mlm(args) -> int:
    from genomec.data import DataError

    check_options(args)
    check_model_sizes(args)
    _quiet_libraries()
    from genomec.models.training import MLMSettings, train_mlm

    settings = MLMSettings(
        seq_len=args.seq_len, batch_size=args.batch_size, learning_rate=args.lr, warmup_fraction=args.warmup,
        vocab_size=args.vocab_size, seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    overrides = {k: getattr(args, k) for k in ("hidden_size", "num_heads", "intermediate_size") if getattr(args, k) is not None}
    overrides["attention_backend"] = args.backend
    out = args.out or str(Path("runs") / f"mlm-{Path(args.genome).stem}")
    try:
        results = train_mlm(
            args.genome, out, args.steps, corpus=args.corpus, tokenizer_dir=args.tokenizer, settings=settings,
            model_overrides=overrides, progress=not args.no_progress,
        )
    except DataError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        _say_how_to_resume()
        raise
    _report(args, results, MLM_SUMMARY)
    return 0


def handle_glue(args) -> int:
    from genomec.data import DataError

    check_options(args)
    _quiet_libraries()
    from genomec.models.training import GlueSettings, train_glue

    settings = GlueSettings(
        seq_len=args.seq_len, batch_size=args.batch_size, learning_rate=args.lr, epochs=args.epochs,
        seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    try:
        results = train_glue(
            args.task, args.data, args.model, out=args.out, steps=args.steps, settings=settings,
            skip_malformed=args.skip_bad_rows, progress=not args.no_progress, backend=args.backend,
        )
    except DataError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        _say_how_to_resume()
        raise
    _report(args, results, ("task", "main_metric", "score", "metrics", "steps"))
    return 0


def _say_how_to_resume() -> None:
    print("genomec train: stopped; run the same command again to resume from the last checkpoint", file=sys.stderr)


def _report(args, results: dict, summary_keys) -> None:
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k != "settings"}))
        return
    for key in summary_keys:
        value = results[key]
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")
    print(f"wrote {results['out']}")
