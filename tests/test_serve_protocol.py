"""The completions protocol in-process: strict request validation, error and logprobs bodies,
and how CompletionBuilder turns engine events into responses and stream chunks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jaxgpt.serve.engine import Event, TokenLogprob
from jaxgpt.serve.protocol import (
    CompletionBuilder,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    error_body,
    logprobs_body,
    validation_message,
)

PIECES = {1: "He", 2: "llo", 3: " wor", 4: "ld", 5: "!", 6: "?", 7: ""}


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def request(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", **fields})


def problem(**fields) -> str:
    """The validation message of a request that must be refused."""
    with pytest.raises(ValidationError) as error:
        request(**fields)
    return validation_message(error.value)


def test_defaults_match_the_documented_table():
    r = request()
    sampling = (r.prompt, r.max_tokens, r.temperature, r.top_p, r.top_k, r.n)
    assert sampling == ("", 16, 1.0, 1.0, 0, 1)
    assert not r.stream and r.stream_options is None and r.stop is None
    assert r.seed is None and r.logprobs is None
    assert r.unsupported() is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": "5"}, "max_tokens: Input should be a valid integer (got '5')"),
        ({"n": 1.0}, "n: Input should be a valid integer (got 1.0)"),
        ({"n": True}, "n: Input should be a valid integer (got True)"),
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"max_tokens": -1}, "max_tokens: Input should be greater than or equal to 0 (got -1)"),
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"temperature": 2.5}, "temperature: Input should be less than or equal to 2"),
        ({"temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
        ({"top_p": 0.0}, "top_p: Input should be greater than 0"),
        ({"top_p": 1.01}, "top_p: Input should be less than or equal to 1"),
        ({"top_k": -1}, "top_k: Input should be greater than or equal to 0"),
        ({"logprobs": 6}, "logprobs: Value error, logprobs must be 0 to 5 (alternatives per"),
        ({"logprobs": -1}, "logprobs must be 0 to 5"),
        ({"seed": 2**63}, "seed: Input should be less than 9223372036854775808"),
        ({"seed": -(2**63) - 1}, "seed: Input should be greater than or equal to"),
        ({"max_tokenz": 5}, "max_tokenz: Extra inputs are not permitted (got 5)"),
        ({"stream_options": {"usage": True}}, "stream_options.usage: Extra inputs are not"),
        ({"stop": ["s"] * 17}, "at most 16 stop sequences"),
        ({"stop": [""]}, "String should have at least 1 character"),
        ({"stop": ["x" * 129]}, "String should have at most 128 characters"),
        ({"stop": "x" * 129}, "String should have at most 128 characters"),
        ({"max_new_tokens": -1}, "max_new_tokens: Input should be greater than or equal to 0"),
        ({"num_beams": 1.0}, "num_beams: Input should be a valid integer"),
    ],
)
def test_strict_validation_names_the_field(fields, message):
    assert message in problem(**fields)


def test_missing_model_and_several_problems_in_one_message():
    assert problem(model=None).startswith("model: Input should be a valid string")
    with pytest.raises(ValidationError) as error:
        CompletionRequest.model_validate({"n": 0, "top_k": -2})
    text = validation_message(error.value)
    assert text.split("; ") == [
        "model: field required",
        "top_k: Input should be greater than or equal to 0 (got -2)",  # in field order
        "n: Input should be greater than or equal to 1 (got 0)",
    ]


def test_long_inputs_are_cut_in_the_message():
    text = problem(max_tokens="9" * 200)
    got = text.split("(got ", 1)[1].rstrip(")")
    assert len(got) == 60 and got.endswith("...") and got.startswith("'999")


def test_a_validation_error_without_location_says_body():
    with pytest.raises(ValidationError) as error:
        CompletionRequest.model_validate([1, 2])
    assert validation_message(error.value).startswith("body: ")


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"echo": True, "stream": True}, "echo cannot be streamed"),
        ({"echo": True, "max_tokens": 2}, "echo supports max_tokens 0 (score the prompt) or 1"),
        ({"max_tokens": 0}, "max_tokens 0 needs echo: true"),
        ({"num_beams": 4}, "num_beams > 1 (beam search) is not supported"),
        ({"repetition_penalty": 1.2}, "repetition_penalty is not supported"),
        ({"do_sample": False, "temperature": 0.7}, "do_sample false asks for greedy decoding"),
        ({"suffix": "tail"}, "suffix (insertion) is not supported"),
        ({"best_of": 3}, "best_of is not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty and frequency_penalty"),
        ({"frequency_penalty": -1.0}, "presence_penalty and frequency_penalty"),
        ({"logit_bias": {"50256": -100.0}}, "logit_bias is not supported"),
    ],
)
def test_unsupported_fields_are_refused_with_a_reason(fields, phrase):
    assert phrase in request(**fields).unsupported()


def test_harmless_values_of_unsupported_fields_are_accepted():
    r = request(echo=False, suffix="", best_of=1, presence_penalty=0.0, logit_bias={}, user="u")
    assert r.unsupported() is None


def test_what_lm_eval_sends_is_accepted():
    """local-completions' loglikelihood payload, and a generate_until payload with the
    generation_kwargs shipped tasks forward (stop lists of 5 + end-of-text)."""
    score = request(prompt=[[5, 6, 7], [5, 6]], temperature=0, max_tokens=1, logprobs=1,
                    seed=1234, echo=True)  # fmt: skip
    assert score.unsupported() is None and score.temperature == 0.0
    assert request(prompt=[5], echo=True, max_tokens=0).unsupported() is None
    stops = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "</s>"]
    gen = request(prompt=[[5, 6]], max_tokens=256, temperature=0, stop=stops, seed=1234,
                  top_p=0.95, num_beams=1, repetition_penalty=1, do_sample=False)  # fmt: skip
    assert gen.unsupported() is None and gen.stops == stops
    assert request(do_sample=True, temperature=0.8).unsupported() is None


def test_max_new_tokens_is_a_second_cap():
    assert request(max_tokens=256, max_new_tokens=150).max_tokens == 150
    assert request(max_tokens=16, max_new_tokens=150).max_tokens == 16


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("hi", ["hi"]),
        ("", [""]),
        ([], [""]),
        (["a", "b"], ["a", "b"]),
        ([5, 6, 7], [[5, 6, 7]]),  # one prompt as token ids
        ([[5], [6, 7]], [[5], [6, 7]]),
    ],
)
def test_prompts_as_a_list(prompt, prompts):
    assert request(prompt=prompt).prompts == prompts


def test_prompt_of_mixed_types_is_refused():
    assert "prompt" in problem(prompt=[1, "a"])
    assert "prompt" in problem(prompt=7)


@pytest.mark.parametrize(
    ("stop", "stops"), [(None, []), ("\n", ["\n"]), (["a", "bc"], ["a", "bc"]), ([], [])]
)
def test_stops_as_a_list(stop, stops):
    assert request(stop=stop).stops == stops


def test_error_body_has_openais_shape():
    assert error_body("bad") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}
    }
    assert error_body("full", "server_error", "n", "queue_full")["error"] == {
        "message": "full",
        "type": "server_error",
        "param": "n",
        "code": "queue_full",
    }


def test_logprobs_body_offsets_count_from_the_given_offset():
    tokens = [
        TokenLogprob(1, -0.5, [(1, -0.5), (5, -1.0)]),
        TokenLogprob(2, -0.25, [(2, -0.25)]),
        TokenLogprob(3, -2.0, []),
    ]
    body = logprobs_body(tokens, decode, 10)
    assert body == {
        "tokens": ["He", "llo", " wor"],
        "token_logprobs": [-0.5, -0.25, -2.0],
        "top_logprobs": [{"He": -0.5, "!": -1.0}, {"llo": -0.25}, {}],
        "text_offset": [10, 12, 15],
    }
    assert logprobs_body([], decode, 3) == {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }


def lp(token: int, logprob: float) -> TokenLogprob:
    """A token with three alternatives, the drawn one first."""
    return TokenLogprob(token, logprob, [(token, logprob), (5, -3.0), (6, -4.0)])


def test_stream_chunks_and_the_final_response():
    out = CompletionBuilder("cmpl-1", "m", 2, 2, decode)
    first = out.add(Event(0, "Hello", 2, [lp(1, -0.1), lp(2, -0.2)]))
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert (first["id"], first["object"], first["model"]) == ("cmpl-1", "text_completion", "m")
    assert isinstance(first["created"], int)
    [choice] = first["choices"]
    assert (choice["index"], choice["text"], choice["finish_reason"]) == (0, "Hello", None)
    assert choice["logprobs"]["text_offset"] == [0, 2]
    assert choice["logprobs"]["top_logprobs"][0] == {"He": -0.1, "!": -3.0}  # trimmed to 2
    assert not out.done

    # Offsets of a later chunk continue from the text this choice already sent.
    second = out.add(Event(0, " world", 2, [lp(3, -0.3), lp(4, -0.4)], "length"))
    assert second["choices"][0]["logprobs"]["text_offset"] == [5, 9]
    assert second["choices"][0]["finish_reason"] == "length"
    assert not out.done  # choice 1 has not finished
    third = out.add(Event(1, "!", 1, [lp(5, -0.5)], "stop"))
    assert third["choices"][0]["index"] == 1 and out.done

    whole = out.response(prompt_tokens=3)
    assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    texts = [(c["index"], c["text"], c["finish_reason"]) for c in whole["choices"]]
    assert texts == [(0, "Hello world", "length"), (1, "!", "stop")]
    lp0 = whole["choices"][0]["logprobs"]
    assert lp0["tokens"] == ["He", "llo", " wor", "ld"]
    assert lp0["token_logprobs"] == [-0.1, -0.2, -0.3, -0.4]
    assert lp0["text_offset"] == [0, 2, 5, 9]
    assert all(len(top) == 2 for top in lp0["top_logprobs"])
    assert whole["id"] == "cmpl-1" and whole["created"] == first["created"]


def test_an_event_with_nothing_to_send_gives_no_chunk_but_counts_its_tokens():
    out = CompletionBuilder("cmpl-2", "m", 1, None, decode)
    assert out.add(Event(0, "", 1, [])) is None  # e.g. half a character held back
    chunk = out.add(Event(0, "Hi", 1, []))
    assert chunk["choices"][0]["logprobs"] is None  # logprobs were not asked for
    assert out.usage(4) == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    end = out.add(Event(0, "", 0, [], "stop"))  # end-of-text: no text, but the finish reason
    assert end["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
    assert out.response(4)["choices"][0]["logprobs"] is None


def test_logprobs_zero_keeps_the_tokens_and_drops_the_alternatives():
    out = CompletionBuilder("cmpl-3", "m", 1, 0, decode)
    chunk = out.add(Event(0, "He", 1, [lp(1, -0.1)], "stop"))
    body = chunk["choices"][0]["logprobs"]
    assert body["tokens"] == ["He"] and body["token_logprobs"] == [-0.1]
    assert body["top_logprobs"] == [{}]
    assert out.logprobs[0][0].top == []


def test_logprobs_without_text_still_make_a_chunk():
    """A token whose text is held back still reports its logprob (as the stream must)."""
    out = CompletionBuilder("cmpl-4", "m", 1, 1, decode)
    chunk = out.add(Event(0, "", 1, [lp(7, -0.7)]))
    assert chunk is not None and chunk["choices"][0]["logprobs"]["tokens"] == [""]


def test_usage_chunk_is_the_envelope_with_no_choices():
    out = CompletionBuilder("cmpl-5", "m", 1, None, decode)
    out.add(Event(0, "He", 3, [], "stop"))
    chunk = out.usage_chunk(2)
    assert chunk["choices"] == [] and chunk["object"] == "text_completion"
    assert chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_logprobs_body_of_an_echoed_prompt_starts_with_nulls():
    tokens = [TokenLogprob(1, None, None), TokenLogprob(2, -0.25, [(2, -0.25)])]
    body = logprobs_body(tokens, decode, 0)
    assert body["token_logprobs"] == [None, -0.25]
    assert body["top_logprobs"] == [None, {"llo": -0.25}]
    assert body["tokens"] == ["He", "llo"] and body["text_offset"] == [0, 2]


def test_alternatives_with_the_same_text_keep_the_most_likely():
    """Byte pieces decode alike (7 and 8 both to ""): the dict keeps the first, best value, so
    lm-eval's `logprob == max(top.values())` greedy test stays right."""
    PIECES[8] = ""
    try:
        body = logprobs_body([TokenLogprob(7, -0.1, [(7, -0.1), (8, -2.0)])], decode, 0)
    finally:
        del PIECES[8]
    assert body["top_logprobs"] == [{"": -0.1}]


def test_an_echo_response_starts_with_the_prompt():
    out = CompletionBuilder("cmpl-6", "m", 2, 1, decode, echo=["Hello", "Hello"])
    prompt = [TokenLogprob(1, None, None), lp(2, -0.2)]
    out.add(Event(0, " wor", 1, [*prompt, lp(3, -0.3)], "length"))
    out.add(Event(1, "", 1, [*prompt, lp(7, -0.7)], "stop"))  # end of text drawn: no text
    whole = out.response(prompt_tokens=4)
    first, second = whole["choices"]
    assert (first["text"], second["text"]) == ("Hello wor", "Hello")
    assert first["logprobs"]["token_logprobs"] == [None, -0.2, -0.3]
    assert first["logprobs"]["top_logprobs"] == [None, {"llo": -0.2}, {" wor": -0.3}]
    assert first["logprobs"]["text_offset"] == [0, 2, 5]
    assert len(second["logprobs"]["tokens"]) == 3  # len(prompt) + 1, as lm-eval cuts [:-1]
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_tokenize_requests_are_strict_and_refuse_chat_messages():
    r = TokenizeRequest.model_validate({"prompt": "hi", "add_special_tokens": False})
    assert (r.prompt, r.add_special_tokens, r.model) == ("hi", False, None)
    with pytest.raises(ValidationError) as error:
        TokenizeRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert "chat messages are not supported" in validation_message(error.value)
    with pytest.raises(ValidationError) as error:
        TokenizeRequest.model_validate({"prompt": [1, 2]})
    assert validation_message(error.value).startswith("prompt: Input should be a valid string")
    assert DetokenizeRequest.model_validate({"tokens": [1, 2]}).tokens == [1, 2]
    with pytest.raises(ValidationError):
        DetokenizeRequest.model_validate({"tokens": ["1"]})
