"""An adapter as input embeddings for any engine that takes them (issue 44's library piece): the
base model fed ``prompt_embeddings`` gives the pipeline's own logits and scores (tiny Gemma with
scaled embeddings and soft-capping, fp32), no vLLM needed."""

from __future__ import annotations

import pytest
import torch

from pipeline.methods import ADePT, DePT, PromptTuning
from pipeline.methods.embeddings import prompt_embeddings
from tests.helpers import M, make, perturb, tiny_gemma

IDS = [2, 17, 99, 3, 250, 41, 7]
ANSWER = 2  # the last two tokens are scored as the answer


@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT], ids=lambda m: m.__name__)
def test_the_base_fed_the_embeddings_gives_the_pipelines_logits_and_scores(method) -> None:
    base = tiny_gemma()
    model = make(method, base).eval()
    perturb(model)
    embeds = prompt_embeddings(model, IDS)
    assert embeds.shape == (M + len(IDS), base.config.hidden_size)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        theirs = base(inputs_embeds=embeds[None]).logits[0, M:]
        ours = model.logits(ids)[0]
        target = torch.zeros_like(ids, dtype=torch.bool)
        target[0, -ANSWER:] = True
        score = model(ids, target_mask=target).logprobs[0]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    logprobs = theirs.log_softmax(-1)[-ANSWER - 1 : -1]
    picked = logprobs.gather(1, ids[0, -ANSWER:, None]).sum()
    torch.testing.assert_close(picked, score, rtol=0, atol=1e-5)
    bare = base.get_input_embeddings()(ids)[0]
    assert not torch.allclose(embeds[M:], bare) or method is PromptTuning  # the offset acts


def test_a_model_in_training_mode_is_refused() -> None:
    model = make(ADePT, tiny_gemma())
    with pytest.raises(ValueError, match=r"call model\.eval"):
        prompt_embeddings(model.train(), IDS)
