"""MiniMax H3 in all three conditioning modes on a tiny seeded model of the host's own class (0.33 only).

The host packs one batch-1 sequence per pass (comfy/ldm/minimax/model.py `PackedLayout`, built once per run in
`MiniMaxH3.extra_conds` and handed to the net as `minimax_payload["layout"]`, segments (start, stop, kind)):
- t2va: [text T | target audio | target video];
- fl2va (keyframes, MiniMaxH3ImageToVideo / AddGuide): [text T | keyframe cond rows (+ their audio) | audio | video];
- ref2va (MiniMaxH3ReferenceToVideo): [text T | reference blocks (image, audio, video (+ audio)) | audio | video].
T is the encoder's output length: with an image prompt it holds Qwen3-VL's vision tokens, which the pack counts as
conditioning (as in Qwen-Image-Edit). Guided: target video rows × text keys; keyframe rows, reference blocks and
every audio row keep the dense output. Checked per mode: exactly those rows change, by values of the text keys
only, and PLADIS equals gag_core on the same tensors.
"""
from __future__ import annotations

import pytest
import torch

from conftest import pack_module
from test_comfyui_joint_families import (  # noqa: F401  (fixtures)
    GAG,
    MINIMAX_AUDIO,
    MINIMAX_VIDEO,
    PLADIS,
    _dense,
    jc,
    minimax,
    recorder,
)

pytestmark = pytest.mark.comfyui


def _latent(gen, *shape):
    return torch.randn(*shape, generator=gen)


def mode_conds(mode: str):
    """(extra conditioning entries, rows packed between the text and the target audio) for one mode."""
    g = torch.Generator().manual_seed(5)
    if mode == "fl2va_first":  # MiniMaxH3ImageToVideo with a first frame: one keyframe, 1 latent frame × 2·2 rows
        return {"minimax_keyframes": [{"resolved_frame_index": 0, "latent": _latent(g, 1, 24, 1, 4, 4)}]}, 4
    if mode == "fl2va_first_last_audio":  # first + last frame, the last with an audio guide (AddGuide): 4 + 4 + 2·3
        return {"minimax_keyframes": [
            {"resolved_frame_index": 0, "latent": _latent(g, 1, 24, 1, 4, 4)},
            {"resolved_frame_index": 8, "latent": _latent(g, 1, 24, 1, 4, 4),
             "audio_latent": _latent(g, 1, 32, 2, 3)}]}, 4 + 4 + 6
    if mode == "ref2va":  # image (8 × 4 latent: 4 × 2 rows), audio (5 frames: 10 rows), video (2 × 2·2 rows)
        return {"minimax_refs": [
            {"kind": "image", "latent_h": 8, "latent_w": 4, "latent": _latent(g, 1, 24, 1, 8, 4)},
            {"kind": "audio", "ref_audio_t": 5, "audio_latent": _latent(g, 1, 32, 2, 5)},
            {"kind": "video", "latent_t": 2, "latent_h": 4, "latent_w": 4, "ref_audio_t": 0,
             "latent": _latent(g, 1, 24, 2, 4, 4), "audio_latent": None}]}, 8 + 10 + 8
    raise KeyError(mode)


MODES = ("fl2va_first", "fl2va_first_last_audio", "ref2va")


def conditioning(mode: str):
    extra, _ = mode_conds(mode)
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(1, 7, 32, generator=g), dict(extra)]], [[torch.randn(1, 9, 32, generator=g), dict(extra)]]


@pytest.mark.parametrize("mode", MODES)
def test_guides_target_video_rows_against_the_text_only(jc, recorder, minimax, mode):
    model, sample = minimax
    _, packed = mode_conds(mode)
    positive, negative = conditioning(mode)
    rec = recorder(keep_tensors=True)
    out = sample(jc.run_node(GAG, model=model, scale=6.0, beta=0.3), positive, negative)
    assert torch.isfinite(out).all()
    ac = pack_module(jc.patch, "attention_call")
    passes = rec.per_pass()
    assert len(passes) == rec.passes == 2  # cond and uncond (7 and 9 tokens) run apart, both guided
    for index, guided in passes.items():
        assert [g["block"] for g in guided] == [("double", 0), ("double", 1)] and rec.calls.count(index) == 2
    for g in rec.guided:
        t = g["q_len"] - packed - MINIMAX_AUDIO - MINIMAX_VIDEO
        assert t in (7, 9) and g["text_range"] == (0, t) and g["guided_stop"] == g["q_len"]
        call, got = g["tensors"]
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        got = ac.output_to_bhld(got, call.heads, call.skip_output_reshape).double()
        dense = _dense(q, k, v, None)
        video = t + packed + MINIMAX_AUDIO
        # text, keyframe / reference rows and all audio rows: the dense output
        torch.testing.assert_close(got[:, :, :video], dense[:, :, :video], rtol=1e-4, atol=1e-5)
        delta = got[:, :, video:] - dense[:, :, video:]
        v_t = v[:, :, :t].double()  # the change of a target video row is a mix of the text keys' values only
        coef = torch.linalg.lstsq(v_t.transpose(-1, -2), delta.transpose(-1, -2)).solution
        residual = delta - (v_t.transpose(-1, -2) @ coef).transpose(-1, -2)
        assert delta.abs().max() > 1e-4 and residual.abs().max() < 1e-4 * max(1.0, float(delta.abs().max()))


@pytest.mark.parametrize("mode", MODES)
def test_pladis_equals_gag_core_and_the_caller_is_untouched(jc, recorder, minimax, mode):
    from test_comfyui_nodes import options_snapshot

    model, sample = minimax
    _, packed = mode_conds(mode)
    positive, negative = conditioning(mode)
    before = options_snapshot(model)
    baseline = sample(model, positive, negative)
    rec = recorder(keep_tensors=True)
    out = sample(jc.run_node(PLADIS, model=model, scale=2.0), positive, negative)
    assert torch.isfinite(out).all() and not torch.equal(out, baseline) and rec.guided
    assert torch.equal(sample(model, positive, negative), baseline) and options_snapshot(model) == before
    ac = pack_module(jc.patch, "attention_call")
    for g in rec.guided:
        call, got = g["tensors"]
        q, k, v = (ac.to_bhld(x, call.heads, call.skip_reshape) for x in (call.q, call.k, call.v))
        t = g["q_len"] - packed - MINIMAX_AUDIO - MINIMAX_VIDEO
        want = jc.gag_core_attention.joint_gag_attention(
            q, k, v, text_range=(0, t), method="pladis", scale=2.0, alpha=1.5,
            guided_rows=(t + packed + MINIMAX_AUDIO, q.shape[2]))
        torch.testing.assert_close(ac.output_to_bhld(got, call.heads, call.skip_output_reshape), want,
                                   rtol=1e-4, atol=1e-4)


def test_a_layout_the_row_cannot_read_stays_dense(jc):
    """Keyframes without the host's segment table (a host that stops building it): no call is routed."""
    families = pack_module(jc.patch, "families")
    row = families.FAMILIES["minimax_h3"]
    assert row.stream_rows({"minimax_payload": {"keyframes": [{}]}}) is None
    assert row.stream_rows({"latent_shapes": [(1, 24, 7, 4, 4), (1, 32, 2, 37)]}) == 74
    assert row.modes == ("t2va", "fl2va", "ref2va")
