"""POST /v1/embeddings and GET /v1/models through OpenAI's own Python client, against the
app behind a real server with the API key set, as a user of OpenAI's API would point it
at us: the embeddings are the gists /gist gives, errors arrive as the client's own
exceptions, and the model list names what was trained."""

from __future__ import annotations

import numpy as np
import openai
import pytest
from pydantic import SecretStr

from api.main import create_app
from gistnet.inference import GistEncoder
from tests.service_stack import served, tiny_documents

KEY = "openai-test-key"


@pytest.fixture(scope="module")
def openai_client(api_stack):
    app = create_app(api_stack.settings.model_copy(update={"api_key": SecretStr(KEY)}))
    with served(app) as (host, port):
        base = f"http://{host}:{port}/v1"
        with openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60) as client:
            client.base = base
            yield client


def _expected(trained_model, blocks) -> np.ndarray:
    encoder = GistEncoder.from_checkpoint(trained_model["checkpoint"])
    import torch

    return encoder.encode(torch.tensor(blocks)).numpy().reshape(len(blocks), -1)


def test_token_blocks_embed_as_their_gists_in_order(openai_client, trained_model):
    blocks = [[5] * 32, list(range(3, 35))]
    name = f"gistnet-{trained_model['id']}"
    # A tail shorter than a block is not embedded, but counted as read.
    answer = openai_client.embeddings.create(
        model=name, input=blocks[0] + blocks[1] + [7] * 5, encoding_format="float"
    )
    assert answer.model == name and answer.object == "list"
    assert [e.index for e in answer.data] == [0, 1]
    assert [(e.input_index, e.block) for e in answer.data] == [(0, 0), (0, 1)]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 69
    got = np.asarray([e.embedding for e in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, _expected(trained_model, blocks), atol=1e-5)

    # The client's default asks for base64 (little-endian float32) and decodes it itself;
    # a list of id lists gives each input's blocks after the one before's.
    packed = openai_client.embeddings.create(model=name, input=[blocks[1], blocks[0]])
    assert [(e.input_index, e.block) for e in packed.data] == [(0, 0), (1, 0)]
    np.testing.assert_allclose(np.asarray([e.embedding for e in packed.data]), got[::-1], atol=1e-5)


def test_texts_embed_per_block_or_as_their_mean(openai_client, trained_model):
    texts = tiny_documents(2, seed=3)
    per_block = openai_client.embeddings.create(
        model="gistnet", input=texts, encoding_format="float"
    )
    pooled = openai_client.embeddings.create(
        model="gistnet", input=texts, encoding_format="float", extra_body={"pooling": "mean"}
    )
    assert [e.input_index for e in pooled.data] == [0, 1] and pooled.data[0].block is None
    for i, mean in enumerate(pooled.data):
        mine = [e.embedding for e in per_block.data if e.input_index == i]
        assert len(mine) >= 1
        np.testing.assert_allclose(mean.embedding, np.mean(mine, axis=0), atol=1e-5)
    assert pooled.usage.prompt_tokens == per_block.usage.prompt_tokens


def test_errors_arrive_as_openais_exceptions_naming_the_parameter(openai_client, trained_model):
    name = f"gistnet-{trained_model['id']}"
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.embeddings.create(model=name, input=[[5] * 32], dimensions=8)
    assert refused.value.body["param"] == "dimensions"
    assert "cannot be shortened" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as short:
        openai_client.embeddings.create(model=name, input="a few words")
    assert "fewer than one block of 32" in short.value.body["message"]
    with pytest.raises(openai.BadRequestError) as invalid:
        openai_client.embeddings.create(model=name, input=[])
    assert invalid.value.body["param"] == "input"
    assert invalid.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as outside:
        openai_client.embeddings.create(model=name, input=[[10**6] * 32])
    assert "outside the teacher's vocabulary" in outside.value.body["message"]
    with pytest.raises(openai.NotFoundError, match="GET /v1/models"):
        openai_client.embeddings.create(model="text-embedding-3-small", input=[[5] * 32])
    with openai.OpenAI(base_url=openai_client.base, api_key="wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as denied:
            stranger.models.list()
    assert denied.value.body["code"] == "invalid_api_key"


def test_models_list_the_trained_models_newest_first(openai_client, trained_model):
    listed = [m.id for m in openai_client.models.list()]
    assert f"gistnet-{trained_model['id']}" in listed
    assert listed == sorted(listed, key=lambda n: int(n.split("-")[1]), reverse=True)
    one = openai_client.models.retrieve(f"gistnet-{trained_model['id']}")
    assert one.owned_by == "gistnet" and one.created > 0
    assert openai_client.models.retrieve("gistnet").id == listed[0]
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("gistnet-999999")
