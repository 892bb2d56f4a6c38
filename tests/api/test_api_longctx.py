"""POST /score, POST /generate and /memories: contexts of raw and compressed parts read by
the teacher, on each kind of stack.

Each answer is checked against the library reading the same context itself
(gistnet.context, the teacher's own forward), with gists fetched from POST /gist.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from api.main import create_app
from gistnet.client import parse_events
from gistnet.context import CompressedSpan, RawTokens, context_inputs
from gistnet.substitution import drop_token_id, drop_vector
from gistnet.teacher import load_teacher, load_tokenizer
from service.settings import load_settings
from tests.service_stack import served, tiny_documents, wait_until

pytestmark = [pytest.mark.services]

BLOCK = 32  # the block size of the fixtures' dataset


@pytest.fixture(scope="module")
def reference(teacher):
    """The teacher and tokenizer, loaded here as a script would."""
    return load_teacher(teacher), load_tokenizer(teacher)


@pytest.fixture(scope="module")
def story(reference) -> list[int]:
    _, tokenizer = reference
    return tokenizer(tiny_documents(1)[0], add_special_tokens=False)["input_ids"]


def _gists(client, model_id: int, ids: list[int]) -> torch.Tensor:
    """The gists of the full blocks of `ids`, from POST /gist, as (1, m, k, D)."""
    full = len(ids) // BLOCK
    blocks = [ids[i * BLOCK : (i + 1) * BLOCK] for i in range(full)]
    answer = client.post("/gist", json={"model_id": model_id, "blocks": blocks}).json()
    gists = torch.tensor(answer["gists"])
    return gists.reshape(1, full, answer["gists_per_block"], answer["dim"])


def _reference_logits(teacher, context, *, start=0, sink=None) -> torch.Tensor:
    """The teacher's logits (N, V) over a context, read with no cache at all."""
    inputs = context_inputs(teacher, [context], starts=[start], sink=sink)
    with torch.no_grad():
        return teacher(
            inputs_embeds=inputs.inputs_embeds,
            position_ids=inputs.position_ids,
            attention_mask=inputs.attention_mask,
        ).logits[0]


def _ids(values: list[int]) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.long)


# --------------------------------------------------------------------------- POST /score


def test_score_of_a_raw_context_is_the_teachers_own_log_probs(client, trained_model, reference):
    teacher, tokenizer = reference
    context, continuation = "Once upon a time there was a fox.", " The fox was happy."
    answer = client.post(
        "/score",
        json={
            "model_id": trained_model["id"],
            "context": [{"text": context}],
            "continuation": continuation,
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    a = tokenizer(context, add_special_tokens=False)["input_ids"]
    b = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = teacher(input_ids=_ids(a + b)).logits[0]
    expected = torch.log_softmax(logits[len(a) - 1 : -1], -1).gather(1, torch.tensor(b)[:, None])
    assert body["tokens"] == b
    assert np.allclose(body["token_logprobs"], expected[:, 0].numpy(), atol=1e-4)
    assert body["sum_logprob"] == pytest.approx(float(expected.sum()), abs=1e-3)
    assert body["mean_nll"] == pytest.approx(-float(expected.sum()) / len(b), abs=1e-3)
    assert body["context_length"] == body["uncompressed_length"] == len(a)
    assert body["compressed_blocks"] == 0


def test_a_compressed_context_is_shorter_and_read_where_its_blocks_stood(
    client, trained_model, reference, story
):
    teacher, _ = reference
    compressed, raw, continuation = story[: 3 * BLOCK + 5], story[101:111], story[111:123]
    answer = client.post(
        "/score",
        json={
            "model_id": trained_model["id"],
            "context": [{"compress_tokens": compressed}, {"tokens": raw}],
            "continuation": continuation,
        },
    ).json()
    # 3 blocks of 32 as 3 gists, the 5-token tail and the 10 raw tokens as themselves.
    assert answer["compressed_blocks"] == 3
    assert answer["context_length"] == 3 + 5 + 10
    assert answer["uncompressed_length"] == len(compressed) + len(raw) == 111

    gists = _gists(client, trained_model["id"], compressed)
    context = [
        CompressedSpan(gists, BLOCK),
        RawTokens(_ids(compressed[3 * BLOCK :])),
        RawTokens(_ids(raw + continuation[:-1])),
    ]
    logits = _reference_logits(teacher, context)[-len(continuation) :]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation)[:, None])[:, 0]
    assert np.allclose(answer["token_logprobs"], expected.numpy(), atol=1e-4)


def test_a_bos_sink_model_reads_its_context_after_the_sink(client, sink_model, reference, story):
    teacher, tokenizer = reference
    compressed, continuation = story[: 2 * BLOCK], story[2 * BLOCK : 2 * BLOCK + 6]
    answer = client.post(
        "/score",
        json={
            "model_id": sink_model["id"],
            "context": [{"compress_tokens": compressed}],
            "continuation": continuation,
        },
    ).json()
    assert answer["context_length"] == 1 + 2 and answer["uncompressed_length"] == 1 + 2 * BLOCK
    sink = drop_vector(teacher, drop_token_id(tokenizer, teacher))
    context = [
        CompressedSpan(_gists(client, sink_model["id"], compressed), BLOCK),
        RawTokens(_ids(continuation[:-1])),
    ]
    logits = _reference_logits(teacher, context, start=1, sink=sink)[-len(continuation) :]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation)[:, None])[:, 0]
    assert np.allclose(answer["token_logprobs"], expected.numpy(), atol=1e-4)


def test_keep_last_reads_a_raw_parts_last_tokens_alone(client, trained_model, story):
    def score(part: dict) -> dict:
        body = {"model_id": trained_model["id"], "context": [part], "continuation": story[60:66]}
        return client.post("/score", json=body).json()

    truncated = score({"tokens": story[:60], "keep_last": 12})
    assert truncated == score({"tokens": story[48:60]})
    assert truncated["context_length"] == truncated["uncompressed_length"] == 12
    assert score({"tokens": story[:60], "keep_last": 100}) == score({"tokens": story[:60]})


def test_a_model_with_two_gists_per_block_reads_both_at_each_blocks_end(
    client, two_gist_model, reference, story
):
    teacher, _ = reference
    compressed, continuation = story[: 2 * BLOCK], story[2 * BLOCK : 2 * BLOCK + 6]
    answer = client.post(
        "/score",
        json={
            "model_id": two_gist_model["id"],
            "context": [{"compress_tokens": compressed}],
            "continuation": continuation,
        },
    ).json()
    assert answer["context_length"] == 2 * 2 and answer["compressed_blocks"] == 2
    gists = _gists(client, two_gist_model["id"], compressed)
    assert gists.shape[2] == 2
    context = [CompressedSpan(gists, BLOCK), RawTokens(_ids(continuation[:-1]))]
    logits = _reference_logits(teacher, context)[-len(continuation) :]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(continuation)[:, None])[:, 0]
    assert np.allclose(answer["token_logprobs"], expected.numpy(), atol=1e-4)


# --------------------------------------------------------------------------- POST /generate


def _generate(client, **body) -> dict:
    answer = client.post("/generate", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_greedy_generation_repeats_and_equals_a_loop_without_a_cache(
    client, trained_model, reference, story
):
    teacher, tokenizer = reference
    compressed, prompt = story[: 2 * BLOCK], story[2 * BLOCK : 2 * BLOCK + 8]
    body = {
        "model_id": trained_model["id"],
        "context": [{"compress_tokens": compressed}],
        "prompt": prompt,
        "max_new_tokens": 6,
        "ignore_eos": True,
    }
    first, second = _generate(client, **body), _generate(client, **body)
    assert first == second
    assert len(first["token_ids"]) == 6 and first["finish_reason"] == "length"
    assert first["text"] == tokenizer.decode(first["token_ids"])
    assert first["context_length"] == 2 + 8 and first["prompt_tokens"] == 8

    gists = _gists(client, trained_model["id"], compressed)
    made: list[int] = []
    for _ in range(6):  # each token from a full read of everything before it
        context = [CompressedSpan(gists, BLOCK), RawTokens(_ids(prompt + made))]
        made.append(int(_reference_logits(teacher, context)[-1].argmax()))
    assert first["token_ids"] == made


def test_a_streamed_generation_sends_the_same_tokens_as_events(client, trained_model, story):
    body = {
        "model_id": trained_model["id"],
        "context": [{"compress_tokens": story[:BLOCK]}, {"tokens": story[BLOCK : BLOCK + 4]}],
        "max_new_tokens": 5,
        "temperature": 0.9,
        "top_p": 0.8,
        "seed": 11,
        "ignore_eos": True,
    }
    whole = _generate(client, **body)
    assert _generate(client, **body) == whole  # the same seed, the same tokens
    with client.stream("POST", "/generate", json={**body, "stream": True}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = list(parse_events(answer.iter_lines()))
    tokens = [data for name, data in events if name == "token"]
    assert [t["token_id"] for t in tokens] == whole["token_ids"]
    assert [t["index"] for t in tokens] == list(range(5))
    assert "".join(t["text"] for t in tokens) == whole["text"]
    assert events[-1] == ("done", whole)


def test_generation_stops_at_the_end_of_text_token_unless_told_not_to(
    client, trained_model, reference
):
    # The sample stories end with the end-of-text token: greedy, it comes soon after one.
    _, tokenizer = reference
    ending = tokenizer(tiny_documents(1)[0][-60:], add_special_tokens=False)["input_ids"]
    body = {"model_id": trained_model["id"], "prompt": ending, "max_new_tokens": 40}
    stopped = _generate(client, **body)
    going_on = _generate(client, **body, ignore_eos=True)
    assert len(going_on["token_ids"]) == 40 and going_on["finish_reason"] == "length"
    if stopped["finish_reason"] == "stop":
        eos = tokenizer.eos_token_id
        assert eos not in stopped["token_ids"]
        assert going_on["token_ids"][: len(stopped["token_ids"])] == stopped["token_ids"]
        assert going_on["token_ids"][len(stopped["token_ids"])] == eos
    else:
        assert stopped == going_on


# --------------------------------------------------------------------------- /memories


def test_a_memory_round_trips_and_reads_as_its_compressed_text(
    client, api_stack, trained_model, story
):
    model_id = trained_model["id"]
    created = client.post(
        "/memories", json={"model_id": model_id, "tokens": story[:100], "name": "fox"}
    )
    assert created.status_code == 201, created.text
    memory = created.json()
    assert created.headers["location"] == f"/memories/{memory['id']}"
    assert (memory["tokens"], memory["blocks"], memory["tail_tokens"]) == (100, 3, 4)
    assert memory["context_length"] == 3 + 4 and memory["name"] == "fox"
    assert (api_stack.settings.artifact_root / memory["path"]).is_file()
    assert client.get(f"/memories/{memory['id']}").json() == memory
    listed = client.get("/memories", params={"model_id": model_id}).json()
    assert memory in listed["data"] and listed["count"] >= 1

    continuation = story[100:110]
    by_memory = client.post(
        "/score", json={"context": [{"memory_id": memory["id"]}], "continuation": continuation}
    ).json()
    by_text = client.post(
        "/score",
        json={
            "model_id": model_id,
            "context": [{"compress_tokens": story[:100]}],
            "continuation": continuation,
        },
    ).json()
    assert by_memory["model_id"] == model_id  # the memory's model, none being named
    assert by_memory == by_text
    generate = {"max_new_tokens": 4, "prompt": story[100:104], "ignore_eos": True}
    assert _generate(client, context=[{"memory_id": memory["id"]}], **generate) == _generate(
        client, model_id=model_id, context=[{"compress_tokens": story[:100]}], **generate
    )

    assert client.delete(f"/memories/{memory['id']}").status_code == 204
    assert client.get(f"/memories/{memory['id']}").status_code == 404
    assert not (api_stack.settings.artifact_root / memory["path"]).exists()
    gone = client.post(
        "/score", json={"context": [{"memory_id": memory["id"]}], "continuation": [1]}
    )
    assert gone.status_code == 404 and f"memory {memory['id']}" in gone.json()["detail"]
    assert client.delete(f"/memories/{memory['id']}").status_code == 404


def test_a_short_compressed_part_is_read_raw_and_a_damaged_memory_is_503(
    client, api_stack, trained_model, story
):
    def score(part: dict) -> dict:
        body = {"model_id": trained_model["id"], "context": [part], "continuation": story[20:24]}
        return client.post("/score", json=body)

    short = score({"compress_tokens": story[:20]}).json()
    assert short == score({"tokens": story[:20]}).json() and short["compressed_blocks"] == 0
    memory = client.post(
        "/memories", json={"model_id": trained_model["id"], "tokens": story[:40]}
    ).json()
    (api_stack.settings.artifact_root / memory["path"]).write_bytes(b"not an npz")
    damaged = score({"memory_id": memory["id"]})
    assert damaged.status_code == 503
    assert f"memory {memory['id']} cannot be read" in damaged.json()["detail"]
    client.delete(f"/memories/{memory['id']}")


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("route", "body", "status", "says"),
    [
        (
            "/score",
            {"context": [{"text": "a", "tokens": [1]}], "continuation": "b"},
            422,
            "give exactly one of text, compress, tokens, compress_tokens, memory_id (this part gives text, tokens)",
        ),
        ("/score", {"context": [{}], "continuation": "b"}, 422, "give exactly one of"),
        (
            "/score",
            {"context": [{"compress": "a", "keep_last": 3}], "continuation": "b"},
            422,
            "keep_last truncates a raw part (text or tokens), not a compress part",
        ),
        (
            "/score",
            {"context": [{"tokens": [1, 10**6]}], "continuation": "b"},
            422,
            "context[0].tokens[1] is 1000000, outside the teacher's vocabulary",
        ),
        ("/score", {"context": [{"tokens": [1]}], "continuation": []}, 422, "continuation"),
        (
            "/score",
            {"context": [{"tokens": [1]}], "continuation": [-1]},
            422,
            "continuation[0] is -1",
        ),
        ("/score", {"context": [], "continuation": "b"}, 422, "context: it holds no token"),
        (
            "/score",
            {"context": [{"tokens": [1] * 600}], "continuation": [1]},
            422,
            "the teacher's position limit of 512",
        ),
        (
            "/score",
            {"context": [{"memory_id": 999_999}], "continuation": [1]},
            404,
            "context[0].memory_id: memory 999999 does not exist",
        ),
        ("/score", {"model_id": 999_999, "continuation": [1]}, 404, "model 999999"),
        (
            "/score",
            {"context": [{"tokens": [1] * 16385}], "continuation": [1]},
            413,
            "GISTNET_CONTEXT_MAX_TOKENS",
        ),
        (
            "/generate",
            {"prompt": [1], "max_new_tokens": 513},
            422,
            "GISTNET_GENERATE_MAX_NEW_TOKENS",
        ),
        (
            "/generate",
            {"prompt": [1] * 500, "max_new_tokens": 20},
            422,
            "520 positions, past the teacher's position limit of 512",
        ),
        ("/generate", {"prompt": "", "max_new_tokens": 2}, 422, "it holds no token"),
        ("/generate", {"prompt": [1], "top_p": 0}, 422, "top_p"),
        ("/memories", {"tokens": [1] * 31}, 422, "fewer than one block of 32"),
        ("/memories", {"text": "a", "tokens": [1]}, 422, "exactly one of `text` or `tokens`"),
        ("/memories", {"model_id": 999_999, "tokens": [1] * 32}, 404, "model 999999"),
    ],
)
def test_a_bad_context_request_names_what_is_wrong(
    client, trained_model, route, body, status, says
):
    answer = client.post(route, json={"model_id": trained_model["id"], **body})
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]


def test_a_context_body_past_its_limit_is_413(client, api_stack, trained_model):
    too_long = "x" * (api_stack.settings.context_max_body_bytes + 1)
    answer = client.post("/score", json={"context": [{"text": too_long}], "continuation": "b"})
    assert answer.status_code == 413
    assert "GISTNET_CONTEXT_MAX_BODY_BYTES" in answer.json()["detail"]


def test_a_memory_of_another_model_is_refused(client, trained_model, sink_model, story):
    memory = client.post(
        "/memories", json={"model_id": sink_model["id"], "tokens": story[:BLOCK]}
    ).json()
    answer = client.post(
        "/score",
        json={
            "model_id": trained_model["id"],
            "context": [{"memory_id": memory["id"]}],
            "continuation": [1],
        },
    )
    assert answer.status_code == 422
    assert f"holds gists of model {sink_model['id']}" in answer.json()["detail"]
    client.delete(f"/memories/{memory['id']}")


# --------------------------------------------------------------------------- the lane


def test_a_full_lane_is_429_and_a_client_that_leaves_stops_its_generation(api_stack, trained_model):
    settings = load_settings(
        **{**api_stack.settings.model_dump(exclude={"api_key"}), "context_queue": 1}
    )
    app = create_app(settings)
    body = {"model_id": trained_model["id"], "prompt": [1, 2, 3], "ignore_eos": True}
    with served(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as http:
        assert http.post("/generate", json={**body, "max_new_tokens": 1}).status_code == 200
        lane = app.state.context_lane
        before = lane.passes
        request = {**body, "max_new_tokens": 500, "stream": True}
        with http.stream("POST", "/generate", json=request, timeout=60) as stream:
            lines = stream.iter_lines()
            assert next(parse_events(lines))[0] == "token"
            refused = http.post(
                "/score",
                json={
                    "model_id": body["model_id"],
                    "context": [{"tokens": [1]}],
                    "continuation": [4],
                },
            )
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert "GISTNET_CONTEXT_QUEUE" in refused.json()["detail"]
            metrics = http.get("/metrics").text
            assert "gistnet_context_lane_full_total 1.0" in metrics
            assert "gistnet_context_lane_requests 1.0" in metrics
        wait_until(lambda: lane.holding == 0, timeout=30, what="the generation to stop")
        # Stopped at its client's leaving, far short of its 500 tokens.
        assert lane.passes - before < 400
        again = http.post("/generate", json={**body, "max_new_tokens": 2})
        assert again.status_code == 200 and len(json.loads(again.text)["token_ids"]) == 2
        made = next(
            line
            for line in http.get("/metrics").text.splitlines()
            if line.startswith("gistnet_generated_tokens_total ")
        )
        assert 1 + 1 + 2 <= float(made.split()[1]) < 400


# --------------------------------------------------------------------------- client, CLI


def test_the_client_and_the_command_score_generate_and_keep_memories(
    api_stack, trained_model, story, tmp_path, capsys
):
    from gistnet.client import APIError, Client
    from tools.cli import main as cli

    model_id = trained_model["id"]
    document = tmp_path / "story.txt"
    document.write_text(tiny_documents(1)[0])
    with served(create_app(api_stack.settings)) as (host, port):
        url = f"http://{host}:{port}"
        with Client(url) as gn:
            memory = gn.create_memory(story[:70], model_id=model_id, name="start")
            assert gn.memory(memory["id"]) == memory
            assert memory in gn.memories(model_id=model_id)
            context = [{"memory_id": memory["id"]}, {"tokens": story[70:80]}]
            score = gn.score(story[80:90], context=context)
            assert score["compressed_blocks"] == 2 and len(score["token_logprobs"]) == 10
            options = {"max_new_tokens": 4, "ignore_eos": True, "model_id": model_id}
            answer = gn.generate(story[80:84], context=context, **options)
            events = list(gn.stream_generate(story[80:84], context=context, **options))
            assert [d["token_id"] for e, d in events if e == "token"] == answer["token_ids"]
            assert events[-1] == ("done", answer)
            with pytest.raises(APIError) as refused:
                gn.score("x", context=[{"tokens": [10**6]}], model_id=model_id)
            assert refused.value.status_code == 422 and "tokens[0]" in refused.value.detail

            common = ["--url", url, "--model", str(model_id)]
            assert cli(["score", " the end", "--compress-file", str(document), *common]) == 0
            assert "blocks compressed" in capsys.readouterr().out
            generate = ["generate", "Once", "--memory", str(memory["id"]), "--text", " and"]
            assert cli([*generate, "--max-new-tokens", "3", "--ignore-eos", "--json", *common]) == 0
            printed = json.loads(capsys.readouterr().out)
            assert printed["prompt_tokens"] >= 1 and len(printed["token_ids"]) == 3
            assert cli(["memories", "--url", url, "--model", str(model_id)]) == 0
            assert "start" in capsys.readouterr().out
            assert cli(["memories", "delete", str(memory["id"]), "--url", url]) == 0
            assert cli(["memories", "show", str(memory["id"]), "--url", url]) == 1
            assert "does not exist" in capsys.readouterr().err
