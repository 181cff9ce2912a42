"""Each table has one owner: the optimizer rule codes (nnkern.backends.UPDATE_RULES) as the
Cython, Numba and CUDA engines compiled them, and what each optimizer maps onto them."""

import pytest

from nnkern import optim
from nnkern.backends import OUTPUT_HEAD_CODES, OUTPUT_HEADS, UPDATE_RULE_CODES, UPDATE_RULES


def test_the_rule_codes_are_one_numbering():
    assert UPDATE_RULE_CODES == {name: code for code, name in enumerate(UPDATE_RULES)}


def test_cython_compiled_the_same_rule_codes():
    _cy_train = pytest.importorskip("nnkern.backends._cy_train")
    assert _cy_train.UPDATE_RULE_CODES == UPDATE_RULE_CODES


@pytest.mark.parametrize("module", ["numba_train", "cuda_train"])
def test_numba_and_cuda_use_the_same_rule_codes(module):
    engine = pytest.importorskip(f"nnkern.backends.{module}")
    assert {name: getattr(engine, f"RULE_{name.upper()}") for name in UPDATE_RULES} == UPDATE_RULE_CODES
    if module == "cuda_train":
        assert engine.RULES == frozenset(UPDATE_RULE_CODES.values())


def test_the_loss_heads_are_one_numbering_in_every_cpu_engine():
    assert OUTPUT_HEAD_CODES == {name: code for code, name in enumerate(OUTPUT_HEADS)}
    numba_train = pytest.importorskip("nnkern.backends.numba_train")
    assert {name: getattr(numba_train, f"HEAD_{name.upper()}") for name in OUTPUT_HEADS} == OUTPUT_HEAD_CODES
    _cy_train = pytest.importorskip("nnkern.backends._cy_train")
    assert _cy_train.OUTPUT_HEAD_CODES == OUTPUT_HEAD_CODES


@pytest.mark.parametrize("make, name, a, b", [
    (lambda: optim.SGD(0.1), "sgd", 0.0, 0.0),
    (lambda: optim.SGD(0.1, momentum=0.8), "momentum", 0.8, 0.0),
    (lambda: optim.SGD(0.1, momentum=0.8, nesterov=True), "nesterov", 0.8, 0.0),
    (lambda: optim.Adagrad(0.1, eps=1e-9), "adagrad", 0.0, 0.0),
    (lambda: optim.RMSprop(0.1, alpha=0.9), "rmsprop", 0.9, 0.0),
    (lambda: optim.Adadelta(rho=0.7), "adadelta", 0.7, 0.0),
    (lambda: optim.Adam(0.1, betas=(0.8, 0.99)), "adam", 0.8, 0.99),
    (lambda: optim.AdamW(0.1, betas=(0.8, 0.99), weight_decay=0.1), "adamw", 0.8, 0.99),
])
def test_each_optimizer_names_its_rule_and_hyperparameters(make, name, a, b):
    opt = make()
    rule = opt.update_rule()
    assert (rule.name, rule.code, rule.a, rule.b) == (name, UPDATE_RULE_CODES[name], a, b)
    assert rule.lr == opt.lr and rule.eps == opt.hyperparameters.get("eps", 0.0)
    opt.lr = 0.05  # the rule reads the hyperparameters in force
    assert opt.update_rule().lr == 0.05


def test_an_optimizer_with_its_own_update_has_no_engine_rule():
    class Clipped(optim.SGD):
        def _update(self, p, g, state):
            super()._update(p, g.clip(-1, 1), state)

    assert Clipped(0.1).update_rule() is None
