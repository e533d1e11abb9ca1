"""The oracle packages the curvature systems are checked against import as the Makefile installs them."""


def test_manify_predictors_import(manify_module):
    dt = manify_module("predictors.decision_tree")
    gcn = manify_module("predictors.kappa_gcn")
    assert hasattr(dt, "ProductSpaceDT") and hasattr(dt, "ProductSpaceRF") and hasattr(gcn, "KappaGCN")


def test_hyperdt_and_peft_import():
    import peft
    from hyperdt.tree import HyperbolicDecisionTreeClassifier

    assert HyperbolicDecisionTreeClassifier.__name__ and peft.LoraConfig
