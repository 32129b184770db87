"""The report's headline numbers say how many images they were computed on, and that is the number used."""
import re


def test_headline_counts_are_the_images_used(tmp_path):
    from vitscope.report import report

    page = report("demo-vit", "builtin:demo?n=40", out=tmp_path, name="demo-vit",
                  analyses=["accuracy", "saliency_iou"], progress=False, n_images=5, n_eval=24)
    text = re.sub(r"<[^>]+>", " ", page.read_text())
    acc = re.search(r"accuracy \(top-1\)\s+([\d.]+)% on (\d+) images", text)
    assert acc and int(acc.group(2)) == 24
    sal = re.findall(r"saliency IoU, [\w-]+ masks\s+[\d.]+ \(random weights [\d.]+\) on (\d+) images", text)
    assert sal and all(int(n) == 5 for n in sal)
    assert "images used 5 for the attention analyses" in " ".join(text.split())
