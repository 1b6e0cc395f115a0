"""``autoretouch-train``: make pairs, train, check, export, evaluate and describe generators.

    autoretouch-train heal --out data/heal --photos portraits/*.jpg --face-scale 256 --synthetic 7
    autoretouch-train synthetic --out data/synthetic --photos photos/*.jpg --pairs-per-photo 8
    autoretouch-train check --data data/ffhqr
    autoretouch-train train --data data/ffhqr --out runs/paper --vgg-weights vgg19.pth
    autoretouch-train export --run runs/paper --out model.pt
    autoretouch-train evaluate --checkpoint model.pt --data data/ffhqr --split test
    autoretouch-train model-card --checkpoint model.pt --heldout ... --crops docs/model-card/crops.json ...

Every sub-command has ``--help``. Errors are reported here, once, as one line on stderr; the exit
code is the error's (2: the command line or a config asks for something impossible, 1: the work
failed).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import textwrap
from pathlib import Path

from plugin_server.command import run
from plugin_server.devices import resolve_device
from plugin_server.errors import BadConfigError, BadOptionError, DataError
from plugin_server.model import GeneratorConfig

from .config import TrainConfig
from .synthetic import KINDS

D = TrainConfig()  # defaults, shown in --help
G = GeneratorConfig()


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        # "(default: None)" on a required or unset option tells a newcomer nothing.
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a generator on before/after pairs",
        formatter_class=_Formatter,
        description=(
            "Train a generator on random windows of before/after pairs. Writes RUN_DIR/last.pt every "
            "epoch, best.pt on the best validation PSNR, log.jsonl, loss.png and grid-*.png.\n"
            "Paper ablations: --alpha 0 --beta 0 (MSE); --alpha 0 (MSE + Perc.); defaults (MSE + Perc. + RaGAN).\n"
            "Several GPUs: torchrun --standalone --nproc_per_node N -m training.cli train ..."
        ),
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="data folder (FFHQR or studio layout) or a CSV of pairs")
    data.add_argument("--out", required=True, type=Path, help="run folder for checkpoints, logs and images")
    data.add_argument("--resume", action="store_true", help="continue exactly from RUN_DIR/last.pt (same hyperparameters)")
    data.add_argument("--layout", default=D.layout, choices=["auto", "ffhqr", "studio", "csv"], help="data layout")
    data.add_argument("--val-fraction", type=float, default=D.val_fraction, help="studio/CSV: share of pairs for validation")
    data.add_argument("--test-fraction", type=float, default=D.test_fraction, help="studio/CSV: share of pairs held out for test")
    data.add_argument("--window", type=int, default=D.window, help="side of the square training windows (pixels)")
    data.add_argument("--focus", default=D.focus, choices=["auto", "center", "edits"],
                      help="centre windows on the central face region (aligned faces) or on retouched pixels; auto picks by layout")
    data.add_argument("--background-prob", type=float, default=D.background_prob, help="share of windows taken anywhere in the image")
    data.add_argument("--no-mirror", dest="mirror", action="store_false", help="no random left-right mirroring")
    data.add_argument("--rotate", action="store_true",
                      help="random quarter turns of the windows: more views of a few faces' spots (spots on skin have no up)")
    data.add_argument("--colour-jitter", type=float, default=D.colour_jitter, help="max brightness/contrast/saturation change (0: off)")
    data.add_argument("--face-scale", type=float, default=D.face_scale, metavar="PX",
                      help="resample every pair so the largest face's eye centres are PX pixels apart (its IOD) before "
                      "cutting windows, and export a model that retouches each face at that scale: blemishes are then "
                      "learnt at one size whatever the photos' resolution. FFHQ-aligned 1024x1024 faces have an IOD "
                      "of about 260 px (219-266 measured on ffhq-00001..9), so 256 trains studio portraits at FFHQ "
                      "scale. Pairs with no face found are left out (listed in log.jsonl). 0: photos as they are (native)")
    model = p.add_argument_group("model")
    model.add_argument("--full-channels", type=int, default=G.full_channels, help="generator features at full resolution")
    model.add_argument("--body-channels", type=int, default=G.body_channels, help="generator features at half resolution")
    model.add_argument("--blocks", type=int, default=G.blocks, help="generator residual blocks")
    model.add_argument("--kernel-size", type=int, default=G.kernel_size, help="generator convolution size")
    model.add_argument("--disc-channels", type=int, default=D.disc_channels, help="discriminator width")
    model.add_argument("--disc-layers", type=int, default=D.disc_layers, help="discriminator stride-2 layers")
    loss = p.add_argument_group("loss: L = alpha*RaGAN + beta*Perceptual + gamma*MSE (0 switches a term off)")
    loss.add_argument("--alpha", type=float, default=D.alpha, help="weight of the relativistic average GAN term")
    loss.add_argument("--beta", type=float, default=D.beta, help="weight of the VGG-19 perceptual term")
    loss.add_argument("--gamma", type=float, default=D.gamma, help="weight of the MSE term")
    loss.add_argument("--keep-weight", type=float, default=D.keep_weight,
                      help="MSE weight of pixels the retoucher left unchanged (1: plain MSE; >1: false edits cost more)")
    loss.add_argument("--edit-weight", type=float, default=D.edit_weight,
                      help="MSE weight of the colour error of pixels the retoucher changed by more than 2 levels (1: plain MSE; >1: missed spot and redness edits cost more)")
    loss.add_argument("--ragan-window", type=int, default=D.ragan_window, help="predictions in the RaGAN running average")
    loss.add_argument("--perceptual-layer", default=D.perceptual_layer, help="VGG-19 layer (conv5_2 = the 14th weight layer; reluX_Y = after ReLU)")
    loss.add_argument("--vgg-weights", default=D.vgg_weights, help="torchvision vgg19 state dict (vgg19-dcbb9e9d.pth); see docs/training.md")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--init", default=D.init, metavar="CHECKPOINT",
                     help="start the generator from this checkpoint (training or exported) to fine-tune it, e.g. on your studio's pairs")
    opt.add_argument("--lr-g", type=float, default=D.lr_g, help="Adam learning rate of the generator")
    opt.add_argument("--lr-d", type=float, default=D.lr_d, help="Adam learning rate of the discriminator")
    opt.add_argument("--batch-size", type=int, default=D.batch_size, help="windows per step per process")
    opt.add_argument("--epochs", type=int, default=D.epochs, help="epochs in total (raise it with --resume to train longer)")
    opt.add_argument("--seed", type=int, default=D.seed, help="seed of weights, windows and augmentation")
    opt.add_argument("--precision", default=D.precision, choices=["auto", "fp32", "bf16"], help="auto: bf16 autocast on GPU, fp32 on CPU")
    opt.add_argument("--device", default=D.device, choices=["auto", "cpu", "cuda"], help="where to train")
    run = p.add_argument_group("run")
    run.add_argument("--workers", type=int, default=D.workers, help="data-loading processes per training process")
    run.add_argument("--log-every", type=int, default=D.log_every, help="steps between progress/log lines")
    run.add_argument("--val-every", type=int, default=D.val_every, help="epochs between validation passes (the last epoch is always validated; 0: never validate)")
    run.add_argument("--val-images", type=int, default=D.val_images, help="whole validation images per pass (0: all)")
    run.add_argument("--checkpoint-every", type=int, default=D.checkpoint_every, help="also write last.pt every N steps (0: each epoch only)")
    run.add_argument("--stop-after-steps", type=int, default=D.stop_after_steps, help="stop with a checkpoint after N steps in total (0: run all epochs)")
    p.set_defaults(handler=_cmd_train)


def _synthetic_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthetic",
        help="make before/after pairs by adding blemishes to clean photos (when you have no retouched pairs)",
        formatter_class=_Formatter,
        description=textwrap.dedent("""\
            Make training pairs without a retoucher: each clean photo is the 'after', and the same
            photo with spots, pimples, redness and tone blotches added on its skin is the 'before'.
            Writes the studio layout OUT/before/NAME-K.png and OUT/after/NAME-K.png, which
            `autoretouch-train train --layout studio` reads. The same arguments write the same pairs.
            See docs/synthetic.md.

            Example:
              autoretouch-train synthetic --out data/synthetic --photos photos/*.jpg --pairs-per-photo 8 --short-side 1024
            """),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (studio layout); pairs are added to what is there")
    p.add_argument("--photos", required=True, nargs="+", type=Path, help="clean photos (PNG, JPEG, ...), with distinct file names")
    p.add_argument("--pairs-per-photo", type=int, default=1, help="pairs per photo, each with other blemishes")
    p.add_argument("--seed", type=int, default=0, help="seed of the blemishes")
    p.add_argument("--short-side", type=int, default=None, help="shrink photos to this short side first (pixels)")
    p.add_argument("--aligned", action="store_true", help="photos are FFHQ-aligned faces (eye and mouth boxes known)")
    p.add_argument("--crop", type=int, default=None, help="then keep a CROP x CROP square around the skin (large photos)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                   help="blemish kinds to add: local ones (spots, pimples) or also broad tone (redness, blotches)")
    p.add_argument("--keep-crops", action="store_true",
                   help="with --aligned: per pair, also an untouched crop of an eye, the mouth or the background (before = after)")
    p.set_defaults(handler=_cmd_synthetic)


def _heal_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heal",
        help="make before/after pairs from real portraits: each face healed of its spots and redness as the target",
        formatter_class=_Formatter,
        description=textwrap.dedent("""\
            Make training pairs from real, unretouched portraits. Every face is cut out and
            resampled so the distance between its eye centres is --face-scale pixels. The real
            face is the 'before'; the same face healed (spots, pimples and redness brought to the
            skin around them, under-eye shadows softened, freckles, moles and texture kept) is
            the 'after'. --synthetic adds more 'before' images with made-up blemishes on the same
            face. Writes the studio layout OUT/before/NAME-fK[-sNN].png and OUT/after/..., plus
            OUT/heal.json with what was found; look at OUT/after to preview the targets.
            See docs/heal.md.

            Example:
              autoretouch-train heal --out data/heal --photos portraits/*.jpg --face-scale 256 --synthetic 7
              autoretouch-train train --data data/heal --layout studio --face-scale 256 --out runs/heal
            """),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (studio layout); pairs are added to what is there")
    p.add_argument("--photos", required=True, nargs="+", type=Path, help="real portraits (PNG, JPEG, ...), with distinct file names")
    p.add_argument("--face-scale", type=float, default=256.0, metavar="PX",
                   help="inter-ocular distance the faces are resampled to: the scale the model will be trained at")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="per face, N more pairs with synthetic blemishes")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic blemishes")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                   help="synthetic blemish kinds to add (leave out spots and blotches to keep a model off freckles)")
    p.set_defaults(handler=_cmd_heal)


def _model_card_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-card",
        help="measure an exported model on held-out material for its model card",
        formatter_class=_Formatter,
        description=textwrap.dedent("""\
            Measure a model on material it was not trained on, for the README's model card. Every
            retouch is what a user gets (faces found, each at the model's scale, skin only, fp32):
            - held-out heal pairs (from `autoretouch-train heal` on photos kept out of training):
              PSNR, SSIM and masked PSNR against the healed target, beside No edit;
            - real before/after pairs (--pair, e.g. FFHQR): the same against the professional's
              retouch for No edit, the heal procedure and the model, with how well each edit
              agrees with the professional's over skin;
            - held-out portraits: the redness of the red spots removed, the skin texture and the
              freckles kept, the pixels changed off the skin (should be 0) and the time;
            - the squares of skin the crops file names, saved as before | after | difference x8.
            Writes OUT/metrics.json and OUT/*.png and prints the tables. `make model-card MODEL=m.pt`
            runs it on the shared photos with docs/model-card/crops.json.
            """),
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="exported model to measure (from `export`)")
    p.add_argument("--heldout", type=Path, nargs="+", default=[],
                   help="studio-layout folders of held-out pairs (from `heal`), each scored on its own, named by its folder")
    p.add_argument("--held-out-photos", nargs="+", default=[], metavar="NAME",
                   help="portraits in --photos kept out of training, measured for what was removed and kept")
    p.add_argument("--pair", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), action="append", default=[],
                   help="a real retouch: the original photo and its retouched version (repeat for more pairs)")
    p.add_argument("--photos", required=True, type=Path, help="folder holding the portraits the crops file names")
    p.add_argument("--crops", required=True, type=Path,
                   help="JSON file of the crops to show: {'side': pixels, 'crops': [{'photo', 'label', 'centre': [y, x] "
                   "or null for the middle of the skin, 'name'}]}; see docs/model-card/crops.json")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.json and the crops")
    p.add_argument("--strength", type=float, default=1.0, metavar="S",
                   help="retouch at this strength, as a user's --strength: 0 = no change, 1 = as trained, up to 2")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model (always in fp32)")
    p.set_defaults(handler=_cmd_model_card)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    generator = GeneratorConfig(args.full_channels, args.body_channels, args.blocks, args.kernel_size)
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**fields, "data": str(args.data), "generator": generator})


def _cmd_train(args: argparse.Namespace, command: str) -> int:
    from .train import train

    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise BadConfigError(f"impossible training settings: {exc}") from exc
    train(config, args.out, resume=args.resume, command=command)
    return 0


def _cmd_check(args: argparse.Namespace, command: str) -> int:
    from .pairs import check_pairs

    report = check_pairs(Path(args.data), args.layout, workers=args.workers)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _cmd_export(args: argparse.Namespace, command: str) -> int:
    from plugin_server import checkpoint

    from .state import export

    source = args.checkpoint
    if source is None:
        best, last = args.run / "best.pt", args.run / "last.pt"
        source = best if args.which == "best" and best.exists() else last
    floor = None if args.residual_floor is None else args.residual_floor / 255
    out = export(source, args.out, command=command, residual_floor=floor)
    scale = checkpoint.load(out).scale
    print(f"exported {source} -> {out} (scale: " + (f"faces at an IOD of {scale:g} px)" if scale else "native)"))
    return 0


def _cmd_evaluate(args: argparse.Namespace, command: str) -> int:
    from .evaluate import evaluate
    from .pairs import list_pairs
    from .report import format_table
    from .state import load_any_generator
    from .windows import FilePairs, PairSource

    device = resolve_device(args.device)
    model = load_any_generator(args.checkpoint)
    listing = list_pairs(Path(args.data), args.layout, args.split, args.val_fraction, args.test_fraction)
    source: PairSource = FilePairs(listing)
    left_out = ""
    if model.scale:  # scored as it was validated in training: each pair at the model's face scale
        from .face_scale import FaceScaledPairs, measure_iods

        if args.limit > 0:  # faces are found only in the pairs scored
            source = FilePairs(dataclasses.replace(listing, pairs=listing.pairs[: args.limit]))
        source = FaceScaledPairs(source, model.scale, measure_iods(source, range(len(source))))
        left_out = f", {len(source.left_out)} left out with no face" if source.left_out else ""
        print(f"pairs resampled to the model's face scale (IOD {model.scale:g} px)")
    result = evaluate(model, source, device, limit=args.limit)
    print(f"{args.split} split of {args.data}: {result.images} images" + left_out
          + (f", {len(result.skipped)} skipped" if result.skipped else ""))
    print(format_table([("No edit", result.noedit), ("Model", result.model)]))
    return 0


def _distinct_stems(photos: list[Path]) -> list[str]:
    """The photos' file names without extension, which name their pairs: refused when two clash."""
    stems = [photo.stem for photo in photos]
    if len(set(stems)) != len(stems):
        raise BadOptionError("the photos must have distinct file names (they name the pairs)")
    return stems


def _cmd_synthetic(args: argparse.Namespace, command: str) -> int:
    from .synthetic import SyntheticPairs, only_kinds, write_pairs

    if args.pairs_per_photo < 1:
        raise BadOptionError(f"--pairs-per-photo must be at least 1, got {args.pairs_per_photo}")
    if args.keep_crops and not args.aligned:
        raise BadOptionError("--keep-crops needs --aligned (it crops where FFHQ puts the eyes and mouth)")
    stems = _distinct_stems(args.photos)
    config = only_kinds(args.kinds)
    pairs = SyntheticPairs(args.photos, args.pairs_per_photo, args.seed, args.short_side, args.aligned, config, args.crop)
    try:
        written = write_pairs(pairs, stems, args.out, keep=args.keep_crops)
    except OSError as exc:  # reading is checked by load_photo; this is the output side
        raise DataError(f"cannot write the pairs into {args.out}: {exc}") from exc
    print(f"wrote {len(written)} pairs to {args.out}")
    return 0


def _cmd_heal(args: argparse.Namespace, command: str) -> int:
    from .heal_pairs import write_heal_pairs
    from .synthetic import only_kinds

    if args.synthetic < 0:
        raise BadOptionError(f"--synthetic must be 0 or more, got {args.synthetic}")
    if not args.face_scale > 0:
        raise BadOptionError(f"--face-scale must be a positive number of pixels, got {args.face_scale}")
    _distinct_stems(args.photos)
    try:
        report = write_heal_pairs(args.photos, args.out, args.face_scale, args.synthetic, args.seed,
                                  config=only_kinds(args.kinds), command=command)
    except OSError as exc:  # reading is checked by load_photo; this is the output side
        raise DataError(f"cannot write the pairs into {args.out}: {exc}") from exc
    faces = [face for found in report["photos"].values() for face in found]
    pairs = sum(face["pairs"] for face in faces)
    healed = sum(face["found"]["red"] + face["found"]["dark"] for face in faces)
    print(f"wrote {pairs} pairs of {len(faces)} faces to {args.out} ({healed} spots healed)")
    for name, found in report["photos"].items():
        if not found:
            print(f"  {name}: no face found, no pairs")
    return 0


def _cmd_model_card(args: argparse.Namespace, command: str) -> int:
    from plugin_server import checkpoint
    from plugin_server.wire import RetouchOptions

    from . import model_card

    RetouchOptions(strength=args.strength)  # before the slow part: a bad strength or file stops at once
    plan = model_card.read_crops(args.crops)
    model = checkpoint.load(args.checkpoint)
    report = model_card.measure(model, args.checkpoint, args.heldout, args.held_out_photos, [tuple(p) for p in args.pair],
                                plan, args.photos, args.out, resolve_device(args.device), args.strength)
    print(model_card.summary(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoretouch-train",
        formatter_class=_Formatter,
        description="Train AutoRetouch generators and turn them into checkpoints the server loads. "
        "Start with `check` (or make pairs from real portraits with `heal`, or with `synthetic`), then `train`, then `export`; `evaluate` prints "
        "the paper's table and `model-card` measures a model on held-out material.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{heal,synthetic,check,train,export,evaluate,model-card}"
    )
    _heal_parser(sub)
    _synthetic_parser(sub)
    _train_parser(sub)

    p = sub.add_parser("check", help="report unpaired, unreadable and size-mismatched files", formatter_class=_Formatter,
                       description="Decode every image of a data set once and list the pairs training would skip. "
                       "Exit code 0 when clean, 1 when problems were found.")
    p.add_argument("--data", required=True, help="data folder or CSV of pairs")
    p.add_argument("--layout", default="auto", choices=["auto", "ffhqr", "studio", "csv"], help="data layout")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.set_defaults(handler=_cmd_check)

    p = sub.add_parser("export", help="write a run's generator in the server's checkpoint format", formatter_class=_Formatter,
                       description="Turn a training checkpoint into the file the AutoRetouch server loads, with metadata "
                       "(data, epochs, steps, validation metrics, command lines).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="run folder; takes best.pt (or last.pt if there is no best)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint file")
    p.add_argument("--which", default="best", choices=["best", "last"], help="with --run: which checkpoint")
    p.add_argument("--out", required=True, type=Path, help="where to write the server checkpoint (.pt)")
    p.add_argument("--residual-floor", type=float, metavar="LEVELS",
                   help="drop edits smaller than this many 8-bit levels when serving (and shrink larger ones by it), "
                   "so untouched skin, eyes and background come back exactly; default: as trained (none)")
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser("evaluate", help="print PSNR/SSIM of a model beside the No-edit baseline", formatter_class=_Formatter,
                       description="Run a model over whole images of one split and print the paper's table: rows No edit "
                       "and Model; columns PSNR, SSIM and masked PSNR (over the pixels the retoucher changed).")
    p.add_argument("--checkpoint", required=True, type=Path, help="exported (server) or training checkpoint")
    p.add_argument("--data", required=True, help="data folder or CSV of pairs")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to score")
    p.add_argument("--layout", default="auto", choices=["auto", "ffhqr", "studio", "csv"], help="data layout")
    p.add_argument("--val-fraction", type=float, default=D.val_fraction, help="studio/CSV: as in training")
    p.add_argument("--test-fraction", type=float, default=D.test_fraction, help="studio/CSV: as in training")
    p.add_argument("--limit", type=int, default=0, help="score only the first N pairs (0: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the model")
    p.set_defaults(handler=_cmd_evaluate)
    _model_card_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    command = shlex.join(["autoretouch-train", *argv])
    return run("autoretouch-train", lambda: args.handler(args, command))


if __name__ == "__main__":
    sys.exit(main())
