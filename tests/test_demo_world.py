"""The synthetic world and its scorer: the scorer must read the generator's own images back correctly."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from demo import scorer, world
from demo.evaluate import mcnemar_p


def _key(o):
    return (o.shape, o.colour)


def test_scorer_reads_generator_ground_truth():
    """≥ 99 % of generated images pass their own caption, and detection recovers every object."""
    rng = random.Random(random.randrange(1 << 30))
    n, passed, exact = 400, 0, 0
    for _ in range(n):
        spec, objs, img = world.sample(rng)
        found = scorer.detect(img)
        passed += scorer.check(spec, found)
        exact += sorted(map(_key, found)) == sorted(map(_key, objs))
    assert passed / n >= 0.99, f"scorer accepted only {passed}/{n} ground-truth images"
    assert exact / n >= 0.99, f"detection matched the scene in only {exact}/{n} images"


def _contradiction(rng: random.Random, spec: world.Spec) -> world.Spec:
    """A spec of the same task that differs in one named attribute (shape, colour, count or relation)."""
    if spec.task == "counting":
        return dataclasses.replace(spec, count=5 - spec.count)  # 2 ↔ 3
    if spec.relation is not None:
        flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return dataclasses.replace(spec, relation=flip[spec.relation])
    i = rng.randrange(len(spec.shapes))
    if spec.colours[i] is not None:
        others = [c for c in world.COLOURS if c not in spec.colours]
        colours = list(spec.colours)
        colours[i] = rng.choice(others)
        return dataclasses.replace(spec, colours=tuple(colours))
    others = [s for s in world.SHAPES if s not in spec.shapes]
    shapes = list(spec.shapes)
    shapes[i] = rng.choice(others)
    return dataclasses.replace(spec, shapes=tuple(shapes))


def test_scorer_rejects_contradicting_captions():
    """An image fails a caption that changes one attribute its scene does not have."""
    rng = random.Random(random.randrange(1 << 30))
    n, rejected = 0, 0
    for _ in range(300):
        spec, objs, img = world.sample(rng)
        wrong = _contradiction(rng, spec)
        if scorer.check(wrong, objs):  # the scene happens to satisfy it too (e.g. both relations hold)
            continue
        n += 1
        rejected += not scorer.score(wrong, img)
    assert n > 200
    assert rejected / n >= 0.99, f"scorer accepted {n - rejected}/{n} contradicting captions"


def test_scenes_satisfy_their_spec_and_do_not_overlap():
    rng = random.Random(random.randrange(1 << 30))
    for task in world.TASKS + world.TRAIN_ONLY_TASKS:
        for _ in range(30):
            spec = world.random_spec(rng, task)
            objs = world.scene_for(rng, spec)
            assert scorer.check(spec, objs), (spec, objs)
            for a in range(len(objs)):
                for b in range(a + 1, len(objs)):
                    assert not world._overlaps(objs[a], objs[b])


def test_render_is_background_outside_objects():
    rng = random.Random(random.randrange(1 << 30))
    _, objs, img = world.sample(rng)
    inside = np.zeros(img.shape[:2], bool)
    for o in objs:
        inside |= world.shape_coverage(o.shape, o.cx, o.cy, o.side) > 0
    assert (img[~inside] == np.array(world.BACKGROUND, np.uint8)).all()


def test_captions_tokenize_within_the_vocabulary():
    for task in world.TASKS:
        for spec in world.all_specs(task):
            ids = world.tokenize(world.caption_of(spec))
            assert len(ids) == world.MAX_TOKENS and ids[0] == world.TOKEN["<s>"]
    assert world.tokenize("") == [1] + [0] * (world.MAX_TOKENS - 1)
    with pytest.raises(ValueError, match="purple"):
        world.tokenize("a purple circle")
    with pytest.raises(ValueError, match="longer"):
        world.tokenize("a red circle left of a blue square and a")


def test_wilson_interval_contains_the_estimate():
    rng = random.Random(random.randrange(1 << 30))
    for _ in range(100):
        n = rng.randint(1, 500)
        k = rng.randint(0, n)
        lo, hi = scorer.wilson(k, n)
        assert 0.0 <= lo <= k / n + 1e-12 and k / n - 1e-12 <= hi <= 1.0
    lo, hi = scorer.wilson(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3


def test_mcnemar_is_symmetric_and_exact():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 7) == mcnemar_p(7, 3)
    assert abs(mcnemar_p(0, 6) - 2 / 64) < 1e-12
