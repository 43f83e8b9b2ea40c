"""Back end of the web chart without ComfyUI: statistics values, one message per step, nothing when nobody asks.

nodes/telemetry.py is driven the way ComfyUI drives it: `stats_for` once per guided attention call (all layers,
cond and uncond passes of a step), the post-CFG `StepEnd` once per model evaluation. The sender is a list.
"""
from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch

from test_nodes_glue import glue

telemetry = glue("telemetry")
web_routes = glue("web_routes")
attention = importlib.import_module("gag_glue.gag_core.attention")
combine = importlib.import_module("gag_glue.gag_core.combine")
presets = importlib.import_module("gag_glue.gag_core.presets")


class Sent(list):
    def __call__(self, event, data, client):
        assert event == telemetry.EVENT
        json.dumps(data, allow_nan=False)  # what ComfyUI's websocket does with it (JS cannot parse NaN)
        self.append((client, data))


@pytest.fixture
def sent():
    return Sent()


@pytest.fixture
def tel(sent, monkeypatch):
    """A fresh Telemetry, also as the module's TELEMETRY (the one StepEnd and stats_for use)."""
    fresh = telemetry.Telemetry(sender=sent)
    monkeypatch.setattr(telemetry, "TELEMETRY", fresh)
    return fresh


def options(sigma, schedule):
    return {"sigmas": torch.full((2,), float(sigma)), "sample_sigmas": schedule}


def reference_stats(o_s, o_d, scale, beta, tau):
    """‖λcG‖/‖O_s‖, capped, ‖Δ∥‖², ‖Δ⊥‖² per (token, head), literally from the definitions, in float64."""
    o_s, o_d = o_s.double(), o_d.double()
    delta = o_s - o_d
    par = ((delta * o_s).sum(-1, keepdim=True) / (o_s * o_s).sum(-1, keepdim=True)) * o_s
    perp = delta - par
    g = par + beta * perp
    g_norm = g.norm(dim=-1)
    c = torch.clamp(tau / g_norm, max=1.0)
    rel = scale * c * g_norm / o_s.norm(dim=-1)
    return rel, g_norm > tau, (par * par).sum(-1), (perp * perp).sum(-1)


# ----------------------------------------------------------------------------------------------- values

def test_values_on_a_hand_computed_case(tel, sent):
    # O_s = 2·e1, O_d = e1 + e2: Δ = e1 − e2, Δ∥ = e1, Δ⊥ = −e2, G = Δ∥ (β = 0), ‖G‖ = 1, ‖O_s‖ = 2
    o_s = torch.tensor([[[[2.0, 0.0, 0.0]]]])
    o_d = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    schedule = torch.tensor([3.0, 1.0, 0.0])
    tel.subscribe("page", ["7"])
    for tau, rel, capped in ((15.0, 3.0 * 1.0 / 2.0, 0.0), (0.5, 3.0 * 0.5 / 2.0, 1.0)):
        combine.gag_combine(o_s, o_d, scale=3.0, beta=0.0, tau=tau, stats=tel.stats_for("7", options(3.0, schedule)))
        msg = tel.end_step("7")
        assert msg["rel_guidance"] == pytest.approx(rel)
        assert msg["capped_fraction"] == capped
        assert msg["parallel_energy"] == pytest.approx(1.0) and msg["orthogonal_energy"] == pytest.approx(1.0)
        assert msg["parallel_share"] == pytest.approx(0.5)
        assert (msg["step"], msg["steps"], msg["sigma"], msg["tokens"], msg["calls"]) == (0, 2, 3.0, 1, 1)
    assert [c for c, _ in sent] == ["page", "page"]


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_values_match_the_definitions_on_random_tensors(tel, beta):
    gen = torch.Generator().manual_seed(int(beta * 10) + 1)
    o_s = torch.randn(2, 3, 40, 16, generator=gen)
    o_d = o_s + 0.7 * torch.randn(2, 3, 40, 16, generator=gen)
    rel, capped, par_sq, perp_sq = reference_stats(o_s, o_d, 4.0, beta, 1.0)
    tau = float(((par_sq + beta ** 2 * perp_sq).sqrt()).median())  # about half the tokens capped
    rel, capped, par_sq, perp_sq = reference_stats(o_s, o_d, 4.0, beta, tau)
    tel.subscribe("page", ["3"])
    stats = tel.stats_for("3", options(2.0, torch.tensor([5.0, 2.0, 0.5, 0.0])))
    combine.gag_combine(o_s, o_d, scale=4.0, beta=beta, tau=tau, stats=stats)
    msg = tel.end_step("3")
    assert msg["tokens"] == 2 * 3 * 40 and msg["step"] == 1 and msg["steps"] == 3
    assert msg["rel_guidance"] == pytest.approx(float(rel.mean()), rel=1e-4)
    assert msg["capped_fraction"] == pytest.approx(float(capped.double().mean()), abs=1.5 / capped.numel())
    assert 0.2 < msg["capped_fraction"] < 0.8
    assert msg["parallel_energy"] == pytest.approx(float(par_sq.mean()), rel=1e-4)
    assert msg["orthogonal_energy"] == pytest.approx(float(perp_sq.mean()), rel=1e-4)
    assert msg["parallel_share"] == pytest.approx(float(par_sq.sum() / (par_sq.sum() + perp_sq.sum())), rel=1e-4)


# ----------------------------------------------------------------------------------------------- once per step

def run_sampler(tel, node="7", steps=5, layers=3, passes=2, seed=0, step_end=True):
    """Drive telemetry like ComfyUI: per step, `passes` model passes × `layers` guided attentions, then post-CFG."""
    gen = torch.Generator().manual_seed(seed)
    schedule = torch.linspace(10.0, 0.0, steps + 1)
    end = telemetry.StepEnd(node)
    per_step = []
    for i in range(steps):
        opts = options(float(schedule[i]), schedule)  # one sigmas tensor per step, shared by its passes
        expected = []
        for _ in range(passes):
            for _ in range(layers):
                q, k, v = (torch.randn(1, 2, 12, 8, generator=gen), torch.randn(1, 2, 5, 8, generator=gen),
                           torch.randn(1, 2, 5, 8, generator=gen))
                ref = attention.gag_attention(q, k, v, scale=5.0, beta=0.0, tau=2.0)
                out = attention.gag_attention(q, k, v, scale=5.0, beta=0.0, tau=2.0, stats=tel.stats_for(node, opts))
                torch.testing.assert_close(out, ref)  # statistics never change the output
                one = telemetry.GuidanceStats()
                attention.gag_attention(q, k, v, scale=5.0, beta=0.0, tau=2.0, stats=one)
                expected.append(one)
        per_step.append(expected)
        if step_end:
            x = torch.randn(1, 4, 2, 2, generator=gen)
            assert end({"denoised": x, "sigma": opts["sigmas"]}) is x
    return per_step


def test_one_message_per_step_aggregated_over_layers_and_passes(tel, sent):
    tel.subscribe("page", ["7"])
    per_step = run_sampler(tel, steps=5, layers=3, passes=2)
    assert len(sent) == 5
    for i, ((client, msg), expected) in enumerate(zip(sent, per_step)):
        assert client == "page" and msg["node"] == "7" and msg["step"] == i and msg["steps"] == 5
        assert msg["calls"] == sum(s.calls for s in expected) >= 6
        tokens = sum(s.tokens for s in expected)
        assert msg["tokens"] == tokens == 6 * 2 * 12
        assert msg["rel_guidance"] == pytest.approx(sum(s.rel_guidance_sum for s in expected) / tokens)
        assert msg["capped_fraction"] == pytest.approx(sum(s.capped for s in expected) / tokens)


def test_a_sampler_without_post_cfg_still_gets_one_message_per_step(tel, sent):
    tel.subscribe("page", ["7"])
    run_sampler(tel, steps=4, layers=2, passes=1, step_end=False)
    assert [m["step"] for _, m in sent] == [0, 1, 2]  # each flushed when σ moved on
    tel.end_step("7")
    assert [m["step"] for _, m in sent] == [0, 1, 2, 3]


def test_schedule_step_is_the_nearest_schedule_sigma():
    schedule = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert telemetry.schedule_step(14.6, schedule) == (0, 4)
    assert telemetry.schedule_step(1.0, schedule) == (3, 4)
    assert telemetry.schedule_step(2.9, [14.6, 7.0, 3.0, 1.0, 0.0]) == (2, 4)  # heun's second evaluation
    assert telemetry.schedule_step(None, schedule) == (None, None)
    assert telemetry.schedule_step(1.0, None) == (None, None)
    assert telemetry.schedule_step(1.0, torch.tensor([1.0])) == (None, None)


# ----------------------------------------------------------------------------------------------- off when not asked

def test_nothing_is_computed_or_sent_when_no_client_asked(tel, sent):
    given = []
    stats_for = tel.stats_for
    tel.stats_for = lambda node, opts: given.append(stats_for(node, opts)) or given[-1]
    schedule = torch.tensor([2.0, 1.0, 0.0])
    run_sampler(tel, steps=2)
    assert len(given) == 2 * 2 * 3 and given == [None] * len(given)  # gag_core got stats=None: no extra work
    assert sent == [] and tel.wanted == frozenset()
    # another node's chart does not switch this one on
    tel.subscribe("page", ["8"])
    assert tel.stats_for("7", options(2.0, schedule)) is None
    # subscribed, then hidden again (empty list): off, and the running step is dropped
    tel.subscribe("page", ["7"])
    assert tel.stats_for("7", options(2.0, schedule)) is not None
    tel.subscribe("page", [])
    assert tel.stats_for("7", options(2.0, schedule)) is None and tel.end_step("7") is None
    assert sent == []
    # no server (sender None): never
    off = telemetry.Telemetry()
    off.subscribe("page", ["7"])
    assert off.stats_for("7", options(2.0, schedule)) is None
    assert telemetry.TELEMETRY.stats_for(None, {}) is None


def test_a_client_that_went_away_is_dropped(sent):
    tel = telemetry.Telemetry(sender=sent, connected=lambda client: client == "alive")
    tel.subscribe("gone", ["7"])
    tel.subscribe("alive", ["8"])
    schedule = torch.tensor([2.0, 1.0, 0.0])
    combine.gag_combine(torch.randn(1, 1, 4, 8) + 1, torch.randn(1, 1, 4, 8), scale=2.0,
                        stats=tel.stats_for("7", options(2.0, schedule)))
    tel.end_step("7")
    assert sent == [] and tel.wanted == frozenset({"8"})
    assert tel.stats_for("7", options(1.0, schedule)) is None


def test_messages_go_to_the_clients_that_show_that_node(tel, sent):
    tel.subscribe("a", ["1"])
    tel.subscribe("b", [1, "2"])
    schedule = torch.tensor([2.0, 1.0, 0.0])
    for node in ("1", "2"):
        combine.gag_combine(torch.randn(1, 1, 4, 8) + 1, torch.randn(1, 1, 4, 8), scale=2.0,
                            stats=tel.stats_for(node, options(2.0, schedule)))
        tel.end_step(node)
    assert [(c, m["node"]) for c, m in sent] == [("a", "1"), ("b", "1"), ("b", "2")]


def test_non_finite_values_are_sent_as_null(tel, sent):
    tel.subscribe("page", ["7"])
    stats = tel.stats_for("7", options(float("inf"), torch.tensor([float("inf"), 1.0, 0.0])))
    stats.add(o_sparse_norm=torch.ones(2), update_norm=torch.tensor([1.0, float("nan")]),
              capped=torch.zeros(2, dtype=torch.bool), delta_par_sq=torch.ones(2), delta_perp_sq=torch.ones(2))
    msg = tel.end_step("7")
    assert msg["rel_guidance"] is None and msg["sigma"] is None  # Sent checks allow_nan=False


@pytest.mark.parametrize("client, nodes, fragment", [
    ("", ["1"], "''"),
    (None, ["1"], "None"),
    (7, ["1"], "7"),
    ("page", "1", "'1'"),
    ("page", [{"id": 1}], "{'id': 1}"),
    ("page", [True], "True"),
    ("page", [None], "None"),
    ("page", ["<img src=x>"], "'<img src=x>'"),
    ("page", ["1" * 200], "'111"),
    ("page", [str(i) for i in range(300)], "300"),
])
def test_bad_subscriptions_raise_quoting_the_value(tel, client, nodes, fragment):
    with pytest.raises(ValueError) as e:
        tel.subscribe(client, nodes)
    assert fragment in str(e.value)
    assert tel.wanted == frozenset()


def test_attach_installs_a_deep_copyable_post_cfg_function():
    class Model:
        def __init__(self):
            self.fns = []

        def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization=False):
            assert disable_cfg1_optimization is False  # the chart never changes what the sampler runs
            self.fns.append(fn)

    m = Model()
    telemetry.attach(m, "12")
    telemetry.attach(m, None)
    telemetry.attach(object(), "12")  # not a ModelPatcher: nothing
    assert len(m.fns) == 1 and m.fns[0].node_key == "12"
    clone = copy.deepcopy(m.fns[0])  # ModelPatcher.clone deep-copies model_options
    x = torch.randn(2)
    assert clone.node_key == "12" and clone({"denoised": x}) is x


# ----------------------------------------------------------------------------------------------- routes

def test_presets_payload_is_the_gag_core_table():
    payload = json.loads(json.dumps(web_routes.presets_payload(), allow_nan=False))
    assert payload["version"] == web_routes.API_VERSION and payload["event"] == telemetry.EVENT
    assert payload["presets"] == [json.loads(json.dumps(p.as_dict())) for p in presets.PRESETS.values()]
    labels = [p["label"] for p in payload["presets"]]
    assert len(set(labels)) == len(labels) and "custom" not in labels
    for wanted in ("SDXL", "DMD2 / distilled SDXL", "FLUX.1", "FLUX.2", "Qwen-Image"):
        assert wanted in labels


def test_presets_payload_names_real_widgets_and_preset_fields():
    """Every widget a preset sets exists on that node type (the /object_info snapshot) and is a number field."""
    from workflow_utils import SNAPSHOT_PATH

    info = json.loads(SNAPSHOT_PATH.read_text())["nodes"]
    fields = presets.Preset.__dataclass_fields__
    payload = web_routes.presets_payload()
    assert set(payload["nodes"]) == {"GeometryAwareAttentionGuidance", "GeometryAwareAttentionGuidanceAdvanced",
                                     "PLADISGuidance"}
    for node_type, spec in payload["nodes"].items():
        inputs = info[node_type]["input"]["required"]
        mappings = [spec["widgets"]] + list(spec.get("by_method", {}).values())
        for mapping in mappings:
            for widget, field in mapping.items():
                assert widget in inputs and inputs[widget][0] == "FLOAT", (node_type, widget)
                assert field in fields
                limits = inputs[widget][1]
                for p in presets.PRESETS.values():  # every preset value fits the widget as it is
                    assert limits["min"] <= getattr(p, field) <= limits["max"], (node_type, widget, p.family)
        for method in spec.get("by_method", {}):
            assert method in inputs["method"][1]["options"]
        assert spec["chart"] is True  # PLADIS fills the same statistics on the PyTorch and kernel paths


@pytest.mark.parametrize("body, fragment", [
    ([], "[]"),
    ("x", "'x'"),
    ({"nodes": ["1"]}, "None"),
    ({"client_id": "", "nodes": []}, "''"),
])
def test_parse_subscription_rejects_malformed_bodies(body, fragment):
    with pytest.raises(ValueError) as e:
        web_routes.parse_subscription(body)
    assert fragment in str(e.value)
    assert web_routes.parse_subscription({"client_id": "c"}) == ("c", [])


def test_register_without_a_running_server_does_nothing():
    assert web_routes.register() is False
    assert web_routes.register(server=object()) is False


def test_routes_on_a_fake_prompt_server(monkeypatch):
    """The aiohttp handlers themselves (needs aiohttp, which ComfyUI brings)."""
    web = pytest.importorskip("aiohttp.web")
    test_utils = pytest.importorskip("aiohttp.test_utils")
    import asyncio

    fresh = telemetry.Telemetry()
    monkeypatch.setattr(telemetry, "TELEMETRY", fresh)
    monkeypatch.setattr(web_routes, "_registered", False)
    sent = []

    class Server:
        routes = web.RouteTableDef()
        sockets = {"page": object()}

        def send_sync(self, event, data, sid=None):
            sent.append((event, data, sid))

    server = Server()
    assert web_routes.register(server) is True and web_routes.register(server) is True
    assert fresh.sender == server.send_sync and fresh.connected("page") and not fresh.connected("other")

    async def scenario():
        app = web.Application()
        app.add_routes(server.routes)
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            r = await client.get("/gag/presets")
            assert r.status == 200 and (await r.json()) == json.loads(json.dumps(web_routes.presets_payload()))
            r = await client.post("/gag/telemetry", json={"client_id": "page", "nodes": ["5", 6]})
            assert r.status == 200 and (await r.json())["nodes"] == ["5", "6"]
            r = await client.get("/gag/telemetry")
            assert (await r.json()) == {"event": telemetry.EVENT, "nodes": ["5", "6"]}
            for bad in ({"client_id": "page", "nodes": "5"}, {"nodes": []}, [1]):
                r = await client.post("/gag/telemetry", json=bad)
                assert r.status == 400 and "error" in await r.json()
            r = await client.post("/gag/telemetry", data=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status == 400
            assert (await (await client.get("/gag/telemetry")).json())["nodes"] == ["5", "6"]
            r = await client.post("/gag/telemetry", json={"client_id": "page", "nodes": []})
            assert (await r.json())["nodes"] == [] and fresh.wanted == frozenset()

    asyncio.run(scenario())
    assert sent == []


# ----------------------------------------------------------------------------------------------- caps (issue 15)

@pytest.mark.parametrize("client, fragment", [
    ("c" * 257, "257 characters long (at most 256)"),
    ("c" * 1_000_000, "1,000,000 characters long"),
    ("", "empty"),
    (["page"], "must be a string"),
])
def test_client_id_rejections_say_the_real_reason_and_stay_short(tel, client, fragment):
    for call in (lambda: tel.subscribe(client, ["1"]), lambda: web_routes.parse_subscription({"client_id": client})):
        with pytest.raises(ValueError) as e:
            call()
        assert fragment in str(e.value) and len(str(e.value)) < 200
        assert "non-empty string" not in str(e.value)
    assert tel.wanted == frozenset()


@pytest.mark.parametrize("nodes, fragment", [
    (["7" * 1_000_000], "too long (at most 128 characters)"),
    ([10 ** 5000], "at most 128 digits"),
    (["<" * 100], "malformed node id"),
    ("x" * 1_000_000, "must be a list"),
    ([""], "empty"),
])
def test_node_id_rejections_never_echo_unbounded_input(tel, nodes, fragment):
    with pytest.raises(ValueError) as e:
        tel.subscribe("page", nodes)
    assert fragment in str(e.value) and len(str(e.value)) < 200


def test_subscribed_clients_are_capped_and_gone_pages_make_room(sent, monkeypatch):
    live = set()
    tel = telemetry.Telemetry(sender=sent, connected=lambda c: c in live)
    for i in range(telemetry.MAX_CLIENTS):
        live.add(f"page{i}")
        tel.subscribe(f"page{i}", ["1"])
    live.add("late")
    with pytest.raises(telemetry.TooManyClients, match=f"{telemetry.MAX_CLIENTS} pages"):
        tel.subscribe("late", ["1"])
    tel.subscribe("page3", ["2"])  # a subscribed page may still change its nodes
    tel.subscribe("page4", [])  # and unsubscribe
    tel.subscribe("late", ["1"])  # which made room
    live.discard("page5")  # a page that went away is dropped when room is needed
    live.add("later")
    tel.subscribe("later", ["1"])
    assert "page5" not in tel._clients and len(tel._clients) == telemetry.MAX_CLIENTS


def test_routes_cap_the_body_and_answer_429_when_full(monkeypatch):
    web = pytest.importorskip("aiohttp.web")
    test_utils = pytest.importorskip("aiohttp.test_utils")
    import asyncio

    fresh = telemetry.Telemetry()
    monkeypatch.setattr(telemetry, "TELEMETRY", fresh)
    monkeypatch.setattr(web_routes, "_registered", False)
    monkeypatch.setattr(telemetry, "MAX_CLIENTS", 2)

    class Server:
        routes = web.RouteTableDef()
        sockets = {"a": object(), "b": object(), "c": object()}

        def send_sync(self, event, data, sid=None):
            pass

    assert web_routes.register(Server()) is True

    async def scenario():
        app = web.Application(client_max_size=100 * 1024 * 1024)  # ComfyUI's own limit is the upload size
        app.add_routes(Server.routes)
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            huge = json.dumps({"client_id": "a" * 1_000_000, "nodes": ["1"]})
            r = await client.post("/gag/telemetry", data=huge, headers={"Content-Type": "application/json"})
            assert r.status == 413 and "64" in (await r.json())["error"]

            async def chunks():  # no Content-Length: read no further than the cap
                for _ in range(40):
                    yield b" " * 4096

            r = await client.post("/gag/telemetry", data=chunks())
            assert r.status == 413

            async def trickle():  # a valid body arriving in pieces is read whole
                for piece in (b'{"client_id": ', b'"a", "nodes"', b': ["1"]}'):
                    await asyncio.sleep(0.01)
                    yield piece

            r = await client.post("/gag/telemetry", data=trickle())
            assert r.status == 200 and (await r.json())["nodes"] == ["1"]
            r = await client.post("/gag/telemetry", json={"client_id": "a" * 257, "nodes": ["1"]})
            text = (await r.json())["error"]
            assert r.status == 400 and "257 characters" in text and len(text) < 200
            r = await client.post("/gag/telemetry", data=b'{"client_id": "a", "nodes": [' + b"9" * 5000 + b"]}")
            assert r.status == 400
            for c in ("a", "b"):
                assert (await client.post("/gag/telemetry", json={"client_id": c, "nodes": ["1"]})).status == 200
            r = await client.post("/gag/telemetry", json={"client_id": "c", "nodes": ["1"]})
            assert r.status == 429 and "2 pages" in (await r.json())["error"]

    asyncio.run(scenario())
