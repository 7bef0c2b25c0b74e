"""tools/bench_openset.py's presentation-level bound: what perfect smoothing plus the best threshold gives."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from tests.conftest import load_tool


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_tool("bench_openset")


def test_mean_similarity_decides_a_presentation_whose_frames_disagree(tool: ModuleType) -> None:
    # Presentation 0 shows class 0: one frame leans to class 1, but the mean picks class 0.
    # Presentation 1 shows a never-enrolled object, below every known presentation's mean.
    sims = np.array([[0.9, 0.5], [0.4, 0.6], [0.3, 0.35], [0.35, 0.3]])
    truth = np.array([0, 0, -1, -1])
    shown = np.array([7, 7, 9, 9])
    assert tool.presentation_oracle(sims, truth, shown) == 1.0


def test_presentations_are_weighted_by_their_frames(tool: ModuleType) -> None:
    # The unknown presentation's mean (0.8) beats the known one's (0.7): no threshold gets both.
    # Accepting everything gets the known presentation's 3 frames of 4 right; rejecting
    # everything gets the unknown presentation's 1 frame: the bound is 3/4.
    sims = np.array([[0.7, 0.1]] * 3 + [[0.8, 0.2]])
    truth = np.array([0, 0, 0, -1])
    shown = np.array([1, 1, 1, 2])
    assert tool.presentation_oracle(sims, truth, shown) == pytest.approx(0.75)


def test_a_wrong_class_cannot_be_fixed_by_any_threshold(tool: ModuleType) -> None:
    sims = np.array([[0.2, 0.9], [0.3, 0.8]])  # shows class 0, looks like class 1
    assert tool.presentation_oracle(sims, np.array([0, 0]), np.array([0, 0])) == 0.0


def test_margin_score_adds_the_lead_over_the_second_best(tool: ModuleType) -> None:
    sims = np.array([[0.9, 0.5, 0.1], [0.6, 0.59, 0.0]])
    assert tool.margin_scores(sims) == pytest.approx([1.3, 0.61])


def test_leave_one_out_margin_scores_rebuild_the_own_prototype_without_the_shot(tool: ModuleType) -> None:
    # Class 0: two shots at 0 and 90 degrees; class 1: one shot at 180. Leaving shot 0 out, its
    # own prototype is the other shot (cosine 0) and class 1's is at -1: score 2 * 0 - (-1) = 1.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = tool.loo_margin_scores(x, np.array([0, 0, 1]), normalize=True)
    assert scores.shape == (2,)  # the 1-shot class gives no known score
    assert scores[0] == pytest.approx(1.0)
    # Shot 1 left out: own prototype = shot 0 (cosine 0), class 1 (cosine 0): a tie, 2 * 0 - 0.
    assert scores[1] == pytest.approx(0.0)


def test_single_view_queries_are_scored_against_the_view_mean_prototypes(tool: ModuleType) -> None:
    # The head sums view means (rows 0-1: class 0, row 2: class 1); each shot is queried with its
    # single view. Shot 0's single view is orthogonal to the other class-0 mean: own score 0.
    means = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    singles = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    sims, multi = tool.loo_similarities(singles, means, np.array([0, 0, 1]), normalize=True)
    assert multi.tolist() == [True, True, False]
    assert sims[0].tolist() == pytest.approx([0.0, 1.0]) and sims[1].tolist() == pytest.approx([1.0, 0.0])
