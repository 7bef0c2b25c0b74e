"""``edgefs eval``: protocols the data cannot give are skipped, episodes are cached outside the data,
cross-set (support from one folder, queries from another), leave-one-domain-out, bundles as models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefs.cli import main
from edgefs.data.episodes import Protocol, episode_list_path, fixed_episodes
from edgefs.data.images import open_split
from edgefs.errors import DataError
from edgefs.eval.run import EvalConfig, evaluate


def colour_classes(root: Path, names: list[str], per_class: int, seed: int = 0, side: int = 32) -> Path:
    """A plain ImageFolder of colour PNGs: each class a coloured shape on its own background."""
    rng = np.random.default_rng(seed)
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        h = sum(map(ord, name))  # same class name, same look, in any folder
        bg = np.array([h * 37 % 256, h * 91 % 256, h * 53 % 256], np.uint8)
        fg = [int(255 - v) for v in bg]
        for i in range(per_class):
            img = np.empty((side, side, 3), np.uint8)
            img[:] = bg
            c = rng.integers(side // 3, 2 * side // 3, 2)
            if h % 2:
                cv2.circle(img, (int(c[0]), int(c[1])), side // 5, fg, -1)
            else:
                cv2.rectangle(img, (int(c[0]) - 6, int(c[1]) - 4), (int(c[0]) + 6, int(c[1]) + 4), fg, -1)
            cv2.imwrite(str(folder / f"{i}.png"), img)
    return root


def domain_root(root: Path) -> Path:
    """ROOT/<domain>/{train,val,test}/<class>/*.png plus a manifest, for two domains."""
    for d, domain in enumerate(("cards", "flags")):
        for s, split in enumerate(("train", "val", "test")):
            names = [f"{domain}_{split}_{i}" for i in range(6)]
            colour_classes(root / domain / split, names, per_class=3, seed=10 * d + s)
        (root / domain / "manifest.json").write_text(json.dumps({"domain": domain}))
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEFS_CACHE", str(folder))
    return folder


def test_too_few_images_runs_what_the_data_allows_and_names_the_rest(tmp_path: Path, cache: Path) -> None:
    data = colour_classes(tmp_path / "mine", [f"obj{i}" for i in range(6)], per_class=2)
    messages: list[str] = []
    report = evaluate(EvalConfig(models=["baseline:pixels"], data=str(data), protocols=["5w1s", "5w5s", "20w1s"],
                                 episodes=10, out=str(tmp_path / "rep")), log=messages.append)
    assert set(report["results"]["pixels 1-NN"]) == {"5w1s"}
    assert set(report["skipped"]) == {"5w5s", "20w1s"}
    assert "at least 6 images" in report["skipped"]["5w5s"]
    assert "20 classes" in report["skipped"]["20w1s"]
    md = (tmp_path / "rep" / "eval.md").read_text()
    assert "- 5w5s: 5w5s episodes need 5 classes with at least 6 images" in md
    assert any(m.startswith("skipped 5w5s") for m in messages)
    # the user's folder is left as it was: no episodes/ written into it
    assert not (data / "episodes").exists()
    assert list(cache.glob("episodes/*/test_5w1s1q_mixed_n10_seed0.json"))


def test_no_protocol_possible_is_an_error_listing_why(tmp_path: Path, cache: Path) -> None:
    data = colour_classes(tmp_path / "tiny", ["a", "b"], per_class=1)
    with pytest.raises(DataError, match="no protocol could be evaluated"):
        evaluate(EvalConfig(models=["baseline:pixels"], data=str(data), protocols=["5w1s"], episodes=5,
                            out=str(tmp_path / "r")), log=lambda _: None)


def test_cli_eval_on_a_small_folder_names_what_it_skipped(tmp_path: Path, cache: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = colour_classes(tmp_path / "mine", [f"obj{i}" for i in range(5)], per_class=2)
    rc = main(["eval", "baseline:pixels", "--data", str(data), "--episodes", "10", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "skipped 5w5s" in out and "skipped 20w1s" in out and "5w1s" in out
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["results"]["pixels 1-NN"]["5w1s"]["episodes"] == 10


def test_same_data_protocol_and_seed_give_the_same_cached_episodes(tmp_path: Path, cache: Path) -> None:
    data = colour_classes(tmp_path / "d", [f"c{i}" for i in range(6)], per_class=3)
    config = EvalConfig(models=["baseline:pixels"], data=str(data), protocols=["5w1s"], episodes=12,
                        out=str(tmp_path / "r1"))
    first = evaluate(config, log=lambda _: None)
    [path] = list(cache.glob("episodes/*/*.json"))
    saved = path.read_text()
    path.unlink()  # a lost cache redraws the same seeded list
    second = evaluate(EvalConfig(**{**config.__dict__, "out": str(tmp_path / "r2")}), log=lambda _: None)
    assert path.read_text() == saved
    assert first["results"] == second["results"]


def test_an_existing_list_beside_the_data_is_read_not_rewritten(tmp_path: Path, cache: Path) -> None:
    data = colour_classes(tmp_path / "d", [f"c{i}" for i in range(6)], per_class=3)
    images = open_split(str(data), "test", 1, None)
    legacy = episode_list_path(data / "episodes", "test", Protocol(5, 1, 1), 8, 0)
    # drawn with another seed, so reading it is visible in the scores
    fixed_episodes(images, Protocol(5, 1, 1), 8, seed=7, path=legacy)
    before = legacy.read_bytes()
    report = evaluate(EvalConfig(models=["baseline:pixels"], data=str(data), protocols=["5w1s"], episodes=8,
                                 out=str(tmp_path / "r")), log=lambda _: None)
    assert legacy.read_bytes() == before
    assert not list(cache.glob("episodes/*/*.json"))  # nothing new drawn
    assert report["results"]["pixels 1-NN"]["5w1s"]["episodes"] == 8


def test_cross_set_support_from_one_folder_queries_from_another(tmp_path: Path, cache: Path) -> None:
    shared = [f"item{i}" for i in range(6)]
    support = colour_classes(tmp_path / "photos", [*shared, "only_here"], per_class=2, seed=1)
    queries = colour_classes(tmp_path / "captures", [*shared, "only_there"], per_class=3, seed=2)
    report = evaluate(EvalConfig(models=["baseline:pixels"], support_data=str(support), query_data=str(queries),
                                 protocols=["5w1s", "5w5s"], episodes=20, out=str(tmp_path / "r")),
                      log=lambda _: None)
    assert report["classes"] == 6
    assert report["only_support"] == ["only_here"] and report["only_queries"] == ["only_there"]
    acc = report["results"]["pixels 1-NN"]["5w1s"]
    assert acc["episodes"] == 20 and acc["mean"] > 0.5  # chance is 0.2: classes are matched by name
    assert "5w5s" in report["skipped"] and "5 support" in report["skipped"]["5w5s"]


def test_cross_set_without_shared_classes_is_refused(tmp_path: Path, cache: Path) -> None:
    support = colour_classes(tmp_path / "a", ["x1", "x2"], per_class=2)
    queries = colour_classes(tmp_path / "b", ["y1", "y2"], per_class=2)
    with pytest.raises(DataError, match="share no class names"):
        evaluate(EvalConfig(models=["baseline:pixels"], support_data=str(support), query_data=str(queries),
                            protocols=["2w1s"], episodes=5, out=str(tmp_path / "r")), log=lambda _: None)


def test_leave_one_domain_out_reports_each_domain_and_the_mean(tmp_path: Path, cache: Path,
                                                              conv4_bundle: Path) -> None:
    root = domain_root(tmp_path / "domains")
    report = evaluate(EvalConfig(models=["baseline:pixels"], domains=str(root), protocols=["5w1s", "5w5s"],
                                 episodes=15, model_per_domain={"flags": str(conv4_bundle)},
                                 out=str(tmp_path / "r")), log=lambda _: None)
    per = report["per_domain"]
    assert set(per) == {"cards", "flags"}
    assert all(set(d["skipped"]) == {"5w5s"} for d in per.values())  # 3 images per class
    a, b = (per[d]["results"]["pixels 1-NN"]["5w1s"]["mean"] for d in ("cards", "flags"))
    assert report["mean"]["pixels 1-NN"]["5w1s"]["mean"] == pytest.approx((a + b) / 2)
    assert report["mean"]["pixels 1-NN"]["5w1s"]["domains"] == 2
    held = report["mean"]["held-out model per domain"]["5w1s"]
    assert held["domains"] == 1  # the bundle was given for one domain only
    assert "held-out model per domain" not in per["cards"]["results"]
    md = (tmp_path / "r" / "eval.md").read_text()
    assert "| model | cards | flags | mean |" in md and "(2 of 2 domains)" in md
    assert "- cards 5w5s:" in md
    # fixed episodes per domain, none written into the domain folders
    assert not any((root / d / "episodes").exists() for d in ("cards", "flags"))


def test_cli_domains_and_per_domain_mapping_errors(tmp_path: Path, cache: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = domain_root(tmp_path / "domains")
    rc = main(["eval", "baseline:pixels", "--domains", str(root), "--protocols", "5w1s", "--episodes", "5",
               "--out", str(tmp_path / "r")])
    assert rc == 0 and "mean" in (tmp_path / "r" / "eval.md").read_text()
    assert main(["eval", "baseline:pixels", "--domains", str(root), "--model-per-domain", "nosuch=x.pt"]) != 0
    assert "nosuch" in capsys.readouterr().err
    assert main(["eval", "baseline:pixels", "--domains", str(root), "--model-per-domain", "cards"]) != 0
    assert "DOMAIN=MODEL" in capsys.readouterr().err
    assert main(["eval", "baseline:pixels", "--domains", str(tmp_path / "none")]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_a_bundle_is_evaluated_through_onnx_runtime_and_its_own_head(tmp_path: Path, cache: Path,
                                                                    conv4_bundle: Path, glyph_data: Path) -> None:
    report = evaluate(EvalConfig(models=[str(conv4_bundle)], data=str(glyph_data), protocols=["5w1s"],
                                 episodes=10, out=str(tmp_path / "r")), log=lambda _: None)
    [(name, row)] = report["results"].items()
    assert name == "conv4.edgefs (bundle, prototype head)"
    assert row["5w1s"]["episodes"] == 10 and 0.0 <= row["5w1s"]["mean"] <= 1.0
