"""`vitscope results` names a best block only where higher (or lower) is better, and says which."""
import pandas as pd

from vitscope.experiments.figures import metric_direction, summary_text


def _rows(metric, values):
    return [{"study": "s", "cell": f"c-{metric}", "model": "m", "dataset": "d", "analysis": "a", "block": b,
             "head": None, "model2": None, "block2": None, "task": None, "metric": metric, "value": v, "status": "ok", "error": None} for b, v in enumerate(values)]


def test_best_block_only_for_metrics_with_a_direction():
    df = pd.DataFrame(_rows("top1_k20", [10, 50, 30]) + _rows("attention_distance_A", [1, 9, 3])
                      + _rows("J-Decay", [0.5, 0.1, 0.3]) + _rows("cka", [0.2, 0.9, 0.4]))
    text = summary_text(df)
    assert "a/top1_k20 (higher is better) [d]: m 50 @1" in text
    assert "a/J-Decay (lower is better) [d]: m 0.1 @1" in text
    assert "attention_distance" not in text and "a/cka" not in text


def test_metric_directions():
    higher = ["top1_k20", "top5_k200", "mAP_medium", "mP@10_hard", "pck@0.1", "J&F-Mean", "J-Mean", "F-Recall",
              "nmi", "ari", "purity", "saliency_iou_cls", "identifiability"]
    lower = ["J-Decay", "F-Decay", "fvu", "kl"]
    none = ["attention_distance_A", "cka", "norm_ratio_attn_cls", "gain", "rsa", "auc_trapezoid"]
    assert {m: metric_direction(m) for m in higher} == dict.fromkeys(higher, "higher")
    assert {m: metric_direction(m) for m in lower} == dict.fromkeys(lower, "lower")
    assert {m: metric_direction(m) for m in none} == dict.fromkeys(none, None)
