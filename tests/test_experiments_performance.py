"""The performance page's words are computed from the run: which kernel is faster and by how much."""
import pandas as pd

from mpnn.experiments import performance as E


def _rows():
    return pd.DataFrame([
        {"case": "c", "group": "g", "n": 1, "variant": "book", "median_s": 0.1, "ratio_to_book": 1.0},
        {"case": "c", "group": "g", "n": 1, "variant": "loop", "median_s": 2.0, "ratio_to_book": 20.0},
        {"case": "c", "group": "g", "n": 2, "variant": "book", "median_s": 0.2, "ratio_to_book": 1.0},
        {"case": "c", "group": "g", "n": 2, "variant": "dense", "median_s": 0.1, "ratio_to_book": 0.5},
    ])


def test_comparisons_count_wins_and_name_the_faster_variants():
    table = E.comparisons(_rows())
    assert list(table["other variant"]) == ["loop", "dense"] and list(table["setting"]) == ["n=1", "n=2"]
    assert list(E.comparisons(_rows(), {"c": []})["setting"]) == ["", ""]
    words = E.comparisons_text(table)
    assert words.startswith("In 1 of the 2 comparisons") and "20x" in words
    assert "`dense` in `c` (n=2) takes 0.50 of its time" in words and "as fast or faster" in words
    assert E.comparisons_text(table.iloc[:0]) == "No case timed more than one variant in this run."


def test_yardstick_words_follow_the_measured_ratio():
    base = {"reference": {"n": 64, "gflops": 100.0}, "machine": {"threads": 1}}
    faster = E.yardstick_text(base | {"reference_native": {"gflops": 150.0}}, "cpu", "AVX2")
    slower = E.yardstick_text(base | {"reference_native": {"gflops": 33.0}}, "cpu", "AVX2")
    same = E.yardstick_text(base | {"reference_native": {"gflops": 102.0}}, "cpu", "AVX2")
    assert "1.50 times as fast as torch's CPU BLAS" in faster
    assert "only 0.33 of torch's speed" in slower and "times as fast" not in slower
    assert "about as fast" in same
    assert "could not be built" in E.yardstick_text(base, "cpu", "AVX2")


def test_limit_words_per_size_set():
    table = pd.DataFrame({"case": ["a", "b", "a"], "setting": ["", "", ""], "variant": ["v", "w", "v"],
                          "sizes": ["default sizes", "default sizes", "quick sizes"], "gflops": [1, 2, 3],
                          "fraction of torch.mm": [0.5, 1.2, 0.1]})
    words = E.limit_text(table)
    assert "at the default sizes, the median kernel reaches 0.85" in words and "1 of 2 reach or pass it" in words
    assert "highest is `w` in `b` (1.20)" in words and "at the quick sizes" in words


def test_case_parameters_are_the_registered_sweeps():
    params = E.case_parameters()
    assert params["moe/forward-backward"] == ["k", "n_experts"] and params["tokens/selection"] == ["rho"]


def test_which_kernel_ran_and_why_tables():
    from mpnn.experiments import performance as P
    results = {"kernel_choices": [{"kind": "moe.token_choice", "key": {"E": 8}, "chosen": "torch-loop",
                                   "seconds": {"compiled": 0.004, "torch-loop": 0.002}}],
               "book_vs_torch": [{"case": "moe/forward-backward", "k": 1, "book_variant": "moe-vectorised",
                                  "book_s": 0.0021, "fastest_torch_variant": "moe-torch-loop", "torch_s": 0.002,
                                  "book_over_torch": 1.05}]}
    choices, versus = P.choices_table(results), P.book_vs_torch_table(results)
    assert choices.loc[0, "path taken"] == "torch-loop" and choices.loc[0, "taken / fastest"] == 1.0
    assert versus.loc[0, "setting"] == "k=1" and versus.loc[0, "book / torch"] == 1.05
    words = P.choices_text(choices, versus, "a CPU")
    assert "took the compiled one for 0 of them" in words and "1.05x" in words


def test_page_claims_read_the_results():
    results = {"git_commit": "0123456789abcdef", "cases": ["c", "gone"], "reference_before": {"gflops": 10.0},
               "reference": {"gflops": 20.0}}
    current = E.claim_results_current(results, "0123456789abcdef+dirty")
    assert current["verdict"] is False and current["measured"].endswith("page built at 0123456789ab")
    ran = E.claim_cases_ran(results, _rows())
    assert ran["verdict"] is False and ran["measured"] == "1/2 cases measured (missing: gone)"
    steady = E.claim_reference_steady(results)
    assert steady["timing"] and steady["verdict"] == "inconclusive" and "(ratio 2.00)" in steady["measured"]
