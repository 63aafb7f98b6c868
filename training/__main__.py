"""``python -m training fit|evaluate|export|insight|one-pass|open-set-study|quantize|sanity|
twin|zoo|compare``: see each ``--help``."""

from __future__ import annotations

import argparse
import logging
import sys

from training.augment import PRESETS
from training.backbones import BACKBONES
from training.fit import OPTIMIZERS
from training.insight import PER_CHANNEL

DEFAULT_DATA = "../shared/data/celebs8"
DEFAULT_OTHERS = "../shared/data/others"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def get_args_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, formatter_class=fmt
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser(
        "fit", help="train with staged unfreezing, evaluate, export a bundle", formatter_class=fmt
    )
    fit.add_argument(
        "--data", default=DEFAULT_DATA, help="image tree <root>/<class_id>/*.jpg|png|webp"
    )
    fit.add_argument("--out", default="models/celebs8", help="bundle directory to write")
    fit.add_argument(
        "--run-dir",
        default=None,
        help="checkpoint and report directory (default: runs/<bundle name>)",
    )
    fit.add_argument("--backbone", default="dlib-resnet29", choices=BACKBONES)
    fit.add_argument(
        "--weights",
        default="default",
        help="'default' (pretrained), 'none' (random) or a weights file",
    )
    fit.add_argument(
        "--stages",
        default="head,top,all",
        help="comma-separated stages: head, top, all; 'none': no fine-tuning, the "
        "frozen-feature baseline only (exported)",
    )
    fit.add_argument(
        "--epochs", type=_ints, default=[5, 6, 10], help="epochs per stage, comma-separated"
    )
    fit.add_argument(
        "--lr", type=_floats, default=[3e-3, 3e-4, 1e-4], help="learning rate per stage"
    )
    fit.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    fit.add_argument("--weight-decay", type=float, default=1e-4)
    fit.add_argument(
        "--unfreeze-last", type=int, default=2, help="backbone stages trained in stage 'top'"
    )
    fit.add_argument(
        "--lr-decay",
        type=float,
        default=0.5,
        help="learning-rate factor per unit from the head towards the input",
    )
    fit.add_argument(
        "--patience",
        type=int,
        default=3,
        help="early stopping: epochs without val-loss improvement",
    )
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--dropout", type=float, default=0.3)
    fit.add_argument("--label-smoothing", type=float, default=0.1)
    fit.add_argument("--augment", default="faces", choices=PRESETS)
    fit.add_argument("--val", type=float, default=0.15, help="validation fraction per class")
    fit.add_argument("--test", type=float, default=0.15, help="test fraction per class")
    fit.add_argument(
        "--limit-per-class",
        type=int,
        default=None,
        help="use at most this many images per class (smoke runs)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    fit.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    fit.add_argument(
        "--no-baseline", action="store_true", help="skip the frozen-features linear baseline"
    )
    fit.add_argument(
        "--export",
        default="best",
        choices=["best", "fine-tuned", "baseline"],
        help="which model becomes the bundle: best = the better on the validation split "
        "(accuracy, then cross-entropy) of the fine-tuned model and the baseline",
    )
    fit.add_argument(
        "--framing",
        default="auto",
        choices=["auto", "dlib-chip", "none"],
        help="how much of each crop the model sees: dlib-chip = the box dlib's own face chips "
        "cover (measured on the training crops; the framing dlib's network was trained on), "
        "none = the whole crop; auto = dlib-chip for the dlib backbone",
    )
    fit.add_argument("--version", default="1.0.0", help="version string recorded in the bundle")
    fit.add_argument(
        "--others",
        default=DEFAULT_OTHERS,
        help="strangers' faces <root>/<person>/*.png for the "
        "'none of the classes' threshold; 'none' skips it",
    )
    fit.add_argument(
        "--no-insight", action="store_true", help="skip the top patches (see the insight command)"
    )

    export = sub.add_parser(
        "export", help="export a bundle from a fit checkpoint", formatter_class=fmt
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="runs/<name>/checkpoint.pt written by fit")
    source.add_argument(
        "--bundle",
        help="a bundle to re-export from its own weights (e.g. to the current format: the "
        "embedding output and the open-set gallery); --out may be the same directory",
    )
    export.add_argument("--out", required=True, help="bundle directory to write")
    export.add_argument(
        "--data", default=None, help="image root (default: the one recorded in the checkpoint)"
    )
    export.add_argument(
        "--others",
        default=DEFAULT_OTHERS,
        help="strangers' faces for the open-set threshold; 'none' skips it",
    )
    export.add_argument(
        "--no-insight", action="store_true", help="skip the top patches (see the insight command)"
    )

    study = sub.add_parser(
        "open-set-study",
        help="compare 'none of the classes' scores on a bundle (calibration vs held-out "
        "strangers); prints the table, writes JSON",
        formatter_class=fmt,
    )
    study.add_argument("--bundle", default="models/celebs8")
    study.add_argument("--others", default=DEFAULT_OTHERS, help="strangers' faces <root>/<person>/")
    study.add_argument(
        "--data", default=None, help="image root (default: the one recorded in the bundle)"
    )
    study.add_argument(
        "--target-frr",
        type=float,
        default=0.05,
        help="false rejection rate the threshold is set for on the calibration side",
    )
    study.add_argument("--json", default=None, help="also write the figures to this file")

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a bundle's ONNX model on a split or a tree", formatter_class=fmt
    )
    evaluate.add_argument("--bundle", default="models/celebs8")
    evaluate.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="split recorded in the bundle; 'all' = every image under --data",
    )
    evaluate.add_argument(
        "--data", default=None, help="image root (default: the one recorded in the bundle)"
    )

    insight = sub.add_parser(
        "insight",
        help="store the training patches that excite each channel most in a bundle "
        "(meta.json updated; model files untouched)",
        formatter_class=fmt,
    )
    insight.add_argument("--bundle", default="models/celebs8")
    insight.add_argument(
        "--data",
        default=None,
        help="image root (default: the one recorded in the bundle's split.json)",
    )
    insight.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers of the bundle (default: those whose "
        "units see only part of the input; stem,layer1,layer2 for dlib-resnet29)",
    )
    insight.add_argument("--per-channel", type=int, default=PER_CHANNEL, help="patches per channel")
    insight.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first this many training images (quick runs)",
    )
    insight.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    quantize = sub.add_parser(
        "quantize",
        help="add a static INT8 model (model.int8.onnx) to a bundle, calibrated on its train "
        "split; records the accuracy/agreement/open-set gates and FP32 vs INT8 throughput in "
        "meta.json and prints them",
        formatter_class=fmt,
    )
    quantize.add_argument("--bundle", default="models/celebs8")
    quantize.add_argument(
        "--data", default=None, help="image root (default: the one recorded in the bundle)"
    )
    quantize.add_argument(
        "--others",
        default=DEFAULT_OTHERS,
        help="strangers' faces for the open-set AUROC gate; 'none' skips that gate",
    )
    quantize.add_argument(
        "--calibration-images", type=int, default=128, help="train-split images to calibrate on"
    )
    quantize.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    quantize.add_argument("--format", default="qdq", choices=["qdq", "qoperator"])
    quantize.add_argument("--activations", default="u8", choices=["u8", "s8"])
    quantize.add_argument("--weights", default="s8", choices=["u8", "s8"])
    quantize.add_argument(
        "--per-tensor", action="store_true", help="one weight scale per tensor, not per channel"
    )
    quantize.add_argument(
        "--full-range",
        action="store_true",
        help="8-bit weights instead of 7 (reduce_range off; saturates on CPUs without VNNI)",
    )
    quantize.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads for the throughput figures"
    )
    sanity = sub.add_parser(
        "sanity",
        help="cascading model-parameter randomisation test of every explanation method "
        "(Adebayo et al. 2018) on the bundle's test faces; prints the table and stores it in "
        "meta.json['sanity'] (model files untouched)",
        formatter_class=fmt,
    )
    sanity.add_argument("--bundle", default="models/celebs8")
    sanity.add_argument(
        "--data", default=DEFAULT_DATA, help="image tree <root>/<class_id>/* of split.json's paths"
    )
    sanity.add_argument("--faces", type=int, default=12, help="test faces, spread over the split")
    sanity.add_argument(
        "--methods", default=None, help="comma-separated methods (default: every method)"
    )
    sanity.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    sanity.add_argument(
        "--dry-run", action="store_true", help="print the table without writing meta.json"
    )
    one_pass = sub.add_parser(
        "one-pass",
        help="fit the one-pass explainer (FastSHAP over a grid of the face, method fastshap) "
        "to a bundle's model, gate it on the test split against LIME and occlusion and by the "
        "model-randomisation test, and add it to the bundle (one_pass.onnx, meta.json "
        "one_pass); a failed gate leaves the bundle unchanged",
        formatter_class=fmt,
    )
    one_pass.add_argument("--bundle", default="models/celebs8")
    one_pass.add_argument(
        "--data", default=DEFAULT_DATA, help="image tree <root>/<class_id>/* of split.json's paths"
    )
    one_pass.add_argument(
        "--layer", default="layer3", help="the trunk's last stage; its activation is grid x grid"
    )
    one_pass.add_argument(
        "--context",
        nargs="*",
        default=["layer4", "layer5"],
        help="deeper stages laid on the grid stage's cells as more channels (none: that stage "
        "alone)",
    )
    one_pass.add_argument(
        "--heads", type=int, default=3, help="heads fitted from successive seeds, averaged"
    )
    one_pass.add_argument("--grid", type=int, default=8, help="cells per side of the grid")
    one_pass.add_argument(
        "--value",
        default="logit",
        choices=["logit", "log_probability"],
        help="what a class's cell values share out (a contrast is the logit gap either way)",
    )
    one_pass.add_argument(
        "--masks", type=int, default=64, help="coalitions scored per face (even: antithetic pairs)"
    )
    one_pass.add_argument(
        "--train-faces",
        type=int,
        default=0,
        help="train faces used, spread over the split (0: all)",
    )
    one_pass.add_argument("--val-faces", type=int, default=64, help="val faces for model choice")
    one_pass.add_argument("--epochs", type=int, default=30, help="epochs of the head")
    one_pass.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    one_pass.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay")
    one_pass.add_argument(
        "--dropout", type=float, default=0.3, help="channel dropout on the trunk's features"
    )
    one_pass.add_argument("--width", type=int, default=64, help="channels of the head")
    one_pass.add_argument(
        "--gate-faces", type=int, default=32, help="test faces of the faithfulness gate"
    )
    one_pass.add_argument(
        "--sanity-faces", type=int, default=12, help="test faces of the randomisation gate"
    )
    one_pass.add_argument(
        "--sanity-fit-faces",
        type=int,
        default=120,
        help="train faces of each refit in the randomisation gate (a quarter as many val)",
    )
    one_pass.add_argument(
        "--sanity-masks", type=int, default=8, help="coalitions per face in those refits"
    )
    one_pass.add_argument("--seed", type=int, default=0, help="seed of coalitions and head")
    one_pass.add_argument("--threads", type=int, default=2, help="torch and ORT CPU threads")
    one_pass.add_argument(
        "--dry-run", action="store_true", help="run the gates without writing the bundle"
    )
    zoo = sub.add_parser(
        "zoo",
        help="train the zoo (frozen-feature baseline, a CNN from scratch; optionally the "
        "fine-tuned recipe and an ImageNet network) with fit, export each as a bundle, write "
        "their table, then compare them",
        formatter_class=fmt,
    )
    zoo.add_argument(
        "--members",
        default="linear,scratch",
        help="comma-separated: linear, scratch, fine-tuned, imagenet",
    )
    zoo.add_argument("--data", default=DEFAULT_DATA, help="image tree <root>/<class_id>/*")
    zoo.add_argument("--others", default=DEFAULT_OTHERS, help="strangers' faces <root>/<person>/")
    zoo.add_argument("--out-root", default="models", help="bundles go to <out-root>/<name>")
    zoo.add_argument("--run-root", default="runs/zoo", help="checkpoints and reports")
    zoo.add_argument(
        "--reference",
        default="models/celebs8",
        help="an existing bundle listed (and compared) beside the members; 'none': no reference",
    )
    zoo.add_argument("--seed", type=int, default=0)
    zoo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    zoo.add_argument("--scratch-epochs", type=int, default=30, help="epochs of the scratch CNN")
    zoo.add_argument("--scratch-lr", type=float, default=3e-3, help="its Adam learning rate")
    zoo.add_argument("--scratch-patience", type=int, default=8, help="its early stopping (epochs)")
    zoo.add_argument(
        "--imagenet-arch",
        default="resnet18",
        choices=["resnet18", "resnet50", "vgg16_bn"],
        help="the torchvision network of member imagenet",
    )
    zoo.add_argument(
        "--imagenet-weights",
        default=None,
        help="local ImageNet state dict (.pth) for member imagenet (required by it)",
    )
    zoo.add_argument(
        "--limit-per-class", type=int, default=None, help="fit's --limit-per-class (smoke runs)"
    )
    zoo.add_argument(
        "--insight", action="store_true", help="also store top patches (larger bundles)"
    )
    zoo.add_argument("--table", default="runs/zoo/zoo.md", help="the zoo's markdown table")
    zoo.add_argument("--no-compare", action="store_true", help="skip the comparison")
    zoo.add_argument("--compare-faces", type=int, default=12, help="compare's --faces")
    zoo.add_argument("--compare-requests", type=int, default=30, help="compare's --requests")
    zoo.add_argument("--compare-out", default="runs/zoo/compare.md", help="compare's --out")
    zoo.add_argument("--compare-plot", default="runs/zoo/compare.png", help="compare's --plot")
    compare = sub.add_parser(
        "compare",
        help="bundles side by side: test accuracy, open-set figures, /predict latency and CPU "
        "(the service started per bundle), each explanation method's deletion/insertion AUC, "
        "and between bundles label agreement and the rank correlation of their maps; writes a "
        "markdown report and a PNG of accuracy against cost",
        formatter_class=fmt,
    )
    compare.add_argument(
        "bundles",
        nargs="*",
        default=["models/celebs8", "models/celebs8-linear", "models/celebs8-scratch"],
        help="bundle directories",
    )
    compare.add_argument(
        "--data", default="../shared/data", help="data root with celebs8/ and others/"
    )
    compare.add_argument(
        "--faces", type=int, default=12, help="test faces explained per bundle (spread evenly)"
    )
    compare.add_argument(
        "--requests", type=int, default=30, help="timed /predict calls per bundle (0: skip)"
    )
    compare.add_argument(
        "--methods", default=None, help="comma-separated (default: every method but fastshap)"
    )
    compare.add_argument("--steps", type=int, default=20, help="steps per deletion/insertion curve")
    compare.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    compare.add_argument("--out", default="runs/compare/compare.md", help="markdown report")
    compare.add_argument("--plot", default="runs/compare/compare.png", help="PNG plot")
    compare.add_argument("--json", default=None, help="also write the figures to this file")
    twin = sub.add_parser(
        "twin",
        help="re-export a bundle's torch twin from its own weights in the current format (it "
        "also returns the embedding, for gradient maps of the open-set score); other files kept",
        formatter_class=fmt,
    )
    twin.add_argument("--bundle", default="models/celebs8")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from training import run  # heavy imports only after --help
    from training.compare import compare_command
    from training.one_pass.command import one_pass_command
    from training.open_set_study import study_command
    from training.quantize import quantize_command
    from training.sanity import sanity_command
    from training.twin import twin_command
    from training.zoo import zoo_command

    try:
        commands = {
            "compare": compare_command,
            "fit": run.fit_command,
            "export": run.export_command,
            "evaluate": run.evaluate_command,
            "insight": run.insight_command,
            "one-pass": one_pass_command,
            "open-set-study": study_command,
            "quantize": quantize_command,
            "sanity": sanity_command,
            "twin": twin_command,
            "zoo": zoo_command,
        }
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logging.getLogger("training").error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
