"""ganserve.schema: the one table of request parameters, and everything built from it or checked against it (the
HTTP models, the CLI flags of generate and sample, make_spec, the client's keywords), without a server."""

from __future__ import annotations

import inspect

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import QueryParams

from ganserve.cli import build_parser
from ganserve.client import AsyncClient, Client
from ganserve.errors import SpecError, UnsupportedError
from ganserve.inference.sampling import make_spec
from ganserve.models.config import ModelConfig
from ganserve.schema import (
    PARAMS,
    SPEC_PARAMS,
    check_noise,
    check_rotate,
    check_translate,
    http_params,
    spec_kwargs,
)
from ganserve.serve.params import ApiError, GenerateBody, GenerateQuery, make_job, parse_query


def subcommand(name: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def test_make_spec_takes_the_spec_parameters_with_their_defaults():
    signature = list(inspect.signature(make_spec).parameters.values())[2:]  # after config and seed
    latents = [("z", None), ("w", None)]  # in place of the seed: not shared parameters
    assert [(s.name, s.default) for s in signature] == [(p.name, p.default) for p in SPEC_PARAMS] + latents


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_the_client_takes_every_parameter_by_its_python_name(client):
    keywords = list(inspect.signature(client.generate_bytes).parameters)[2:]  # after self and seed
    assert sorted(keywords) == sorted(p.name for p in PARAMS)


def test_the_http_models_have_every_parameter_under_its_http_name():
    for model, first in ((GenerateQuery, ["seed"]), (GenerateBody, ["seeds", "z", "w"])):
        fields = {name: f.alias or name for name, f in model.model_fields.items()}
        assert fields == {**{k: k for k in first}, **{p.name: p.key for p in PARAMS}}, model.__name__
    assert GenerateQuery.model_fields["class_idx"].alias == "class"


@pytest.mark.parametrize("command", ["generate", "sample"])
def test_generate_and_sample_have_a_flag_for_every_image_parameter(command):
    parser = subcommand(command)
    flags = {s: a for a in parser._actions for s in a.option_strings}
    for p in PARAMS:
        if p.cli_help is not None:
            assert flags[p.flag].dest == p.name and flags[p.flag].help == p.cli_help, p.flag
    args = parser.parse_args(["--seeds", "1-3", "--outdir", "x", "--class", "2", "--psi", "0.5", "--translate=1,0"])
    assert spec_kwargs(args) == {"psi": 0.5, "class_idx": 2, "translate": "1,0"}  # the rest: make_spec's defaults
    assert args.format == "png"


def test_http_params_use_http_names_and_send_lists_as_strings():
    assert http_params(seed=3, class_idx=1, psi=None, translate=(-0.25, 1), mix_layers=[0, 4]) == {
        "seed": 3, "class": 1, "translate": "-0.25,1.0", "mix_layers": "0,4"}
    assert http_params(translate="0.1,0", colour="red") == {"translate": "0.1,0", "colour": "red"}


def test_value_checks_need_no_model_and_name_their_field():
    assert check_rotate(None) == 0.0 and check_rotate(-0.0) == 0.0 and check_translate("0.5,-1") == (0.5, -1.0)
    for check, value, field in ((check_rotate, float("nan"), "rotate"), (check_rotate, True, "rotate"),
                                (check_translate, "0.1", "translate"), (check_translate, (0, 101), "translate"),
                                (check_noise, "loud", "noise")):
        with pytest.raises(SpecError) as e:
            check(value)
        assert e.value.field == field, (check, value)


def test_the_query_parser_reads_the_last_of_a_repeated_parameter_and_locates_errors_as_fastapi():
    params = parse_query(QueryParams("seed=7&psi=0.9&psi=0.6&class=2"))
    assert (params.seed, params.psi, params.class_idx) == (7, 0.6, 2)
    with pytest.raises(RequestValidationError) as e:
        parse_query(QueryParams("seed=1&psi=nan"))
    assert [err["loc"] for err in e.value.errors()] == [("query", "psi")]


def test_make_job_checks_against_the_model_once_with_the_status_of_each_problem():
    configs = {"sg": ModelConfig(arch="stylegan", resolution=16), "pg": ModelConfig(arch="progan", resolution=16)}
    job = make_job(GenerateBody(seeds=[1, 2], psi=0.5, mix_seed=3), [1, 2], configs, "sg")
    assert [s.seed for s in job.specs] == [1, 2] and job.specs[1].mix_layers == job.specs[0].mix_layers != ()
    for body, status, field in (({"mix_seed": 2, "model": "pg"}, 400, "mix_seed"),
                                ({"mix_layers": "fine", "model": "pg"}, 400, "mix_layers"),
                                ({"mix_layers": "coarse"}, 422, "mix_seed"),
                                ({"mix_seed": 2, "mix_layers": [0, 99]}, 422, "mix_layers"),
                                ({"truncation_cutoff": 9}, 422, "truncation_cutoff"),
                                ({"rotate": 5}, 422, "rotate"),
                                ({"class": 1}, 422, "class"),
                                ({"model": "nope"}, 404, "model")):
        with pytest.raises(ApiError) as e:
            make_job(GenerateBody(seeds=[1], **body), [1], configs, "sg")
        assert (e.value.status_code, e.value.field) == (status, field), body
    with pytest.raises(UnsupportedError):
        make_spec(configs["pg"], 1, mix_seed=2)
