"""Every default of the attribution maps and their benchmark, in one dataclass (command line, study, report, app)."""
from __future__ import annotations

from dataclasses import dataclass

from vitscope.analysis.api import Options, OptionError

#: metric groups of the benchmark (each gives one or more rows, see ``metrics.py``)
METRIC_GROUPS = ("deletion", "insertion", "road", "pointing", "iou", "auroc")
TARGETS = ("label", "predicted")
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class ExplainOptions(Options):
    """Options of :func:`~vitscope.analysis.attribution_maps.explain` and of the benchmark
    :func:`~vitscope.analysis.attribution_maps.evaluate` (``vitscope explain`` / ``explain-bench``, the study
    analysis ``attribution-maps``)."""

    methods: tuple[str, ...] = ()            # benchmark: the methods compared (empty: every method)
    metrics: tuple[str, ...] = METRIC_GROUPS  # benchmark: deletion, insertion, road, pointing, iou, auroc
    block: int = -1                          # CAMs: block read; attention methods: the last block rolled out
    site: str = "ln1"                        # CAMs: activation read in the block (ln1 = pytorch-grad-cam's norm1)
    start_block: int = 0                     # attention methods: first block rolled out
    head_fusion: str = "mean"                # rollout: mean, max or min over heads
    discard_ratio: float = 0.0               # rollout / grad-rollout: share of the lowest entries zeroed
    ablation_value: str = "zero"             # Ablation-CAM: zero (the paper) or pytorch-grad-cam (min - 1e7)
    eigen_sign: str = "lapack"               # Eigen-CAM: LAPACK's sign (pytorch-grad-cam) or positive
    steps: int = 64                          # Integrated Gradients: quadrature steps
    ig_rule: str = "gausslegendre"           # Integrated Gradients: Captum's quadrature rule
    baseline: str = "black"                  # Integrated Gradients: black (default), zeros, blur or noise
    samples: int = 16                        # SmoothGrad / VarGrad: noisy copies per image
    stdev: float = 0.15                      # SmoothGrad / VarGrad: noise std in the model's input units
    occlusion_value: float = 0.0             # occlusion: value of an occluded patch (model input units)
    seed: int = 0                            # noise of SmoothGrad, ROAD, the random control and randomisation
    target: str = "label"                    # benchmark: explain the true class (label) or the predicted one
    removal_step: int = 1                    # deletion / insertion: patches removed per step
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS  # ROAD: shares of the pixels removed
    road_noise: float = 0.01                 # ROAD: std of the noise added to the imputed pixels
    pointing_tolerance: int = 0              # pointing game: pixels of tolerance around the mask
    iou_threshold: float = 0.5               # IoU: the map (min-max scaled) is object where >= this
    sanity: bool = False                     # benchmark: also run the cascading randomisation check
    sanity_methods: tuple[str, ...] = ("gradcam", "saliency", "integrated-gradients", "smoothgrad",
                                       "chefer2021-generic")
    sanity_images: int = 8                   # images of the randomisation check
    limit: int | None = None                 # at most this many images
    batch_size: int = 32                     # images per batch (and ablations / occlusions per pass)
    internal_batch_size: int | None = None   # IG steps / SmoothGrad copies per pass (None: all at once)
    device: str | None = None
    progress: bool = False

    def validate(self) -> None:
        from vitscope.analysis.attention.rollout import ROLLOUT_FUSIONS
        from vitscope.analysis.attribution_maps.cam import ABLATION_VALUES, EIGEN_SIGNS, SITES
        from vitscope.analysis.attribution_maps.methods import resolve_method
        from vitscope.analysis.attribution_maps.gradients import BASELINES, IG_RULES

        for name in ("methods", "sanity_methods"):
            v = getattr(self, name)
            v = tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else tuple(v or ())
            try:
                setattr(self, name, tuple(dict.fromkeys(resolve_method(m) for m in v)))
            except ValueError as e:
                raise OptionError(name, f"`{name}`: {e}") from None
        v = self.metrics
        v = tuple(p.strip() for p in v.split(",") if p.strip()) if isinstance(v, str) else tuple(v or ())
        bad = [m for m in v if m not in METRIC_GROUPS]
        if bad or not v:
            raise OptionError("metrics", f"`metrics` takes {', '.join(METRIC_GROUPS)}, got {bad or 'nothing'}")
        self.metrics = tuple(dict.fromkeys(v))
        self.check_int("block", minimum=None)
        self.check_int("start_block", minimum=None)
        self.check_choice("site", tuple(SITES))
        self.check_choice("head_fusion", ROLLOUT_FUSIONS)
        self.check_number("discard_ratio", 0, 1, high_open=True)
        self.check_choice("ablation_value", ABLATION_VALUES)
        self.check_choice("eigen_sign", EIGEN_SIGNS)
        self.check_int("steps", minimum=2)
        self.check_choice("ig_rule", IG_RULES)
        if not isinstance(self.baseline, (int, float)) or isinstance(self.baseline, bool):
            self.check_choice("baseline", BASELINES)
        self.check_int("samples")
        self.check_number("stdev", low=0)
        self.check_number("occlusion_value")
        self.check_int("seed", minimum=0)
        self.check_choice("target", TARGETS)
        self.check_int("removal_step")
        fr = self.road_fractions
        fr = tuple(float(p) for p in fr.split(",") if p.strip()) if isinstance(fr, str) else tuple(fr or ())
        if not fr or any(not 0 < f < 1 for f in fr):
            raise OptionError("road_fractions", f"`road_fractions` takes shares in (0, 1), got {self.road_fractions}")
        self.road_fractions = tuple(sorted(set(fr)))
        self.check_number("road_noise", low=0)
        self.check_int("pointing_tolerance", minimum=0)
        self.check_number("iou_threshold", 0, 1, low_open=True)
        self.check_int("sanity_images")
        self.check_int("limit", optional=True)
        self.check_int("batch_size")
        self.check_int("internal_batch_size", optional=True)
