"""report.md puts SME next to every baseline and names the axes its saving costs."""

from sme_plugin.report import _headline, _tradeoff


def costs(crossbars, energy, latency, area, conversions):
    return {"crossbars": crossbars, "reads": crossbars, "adc_conversions": conversions, "adc_bits_lossless_max": 7,
            "adc_bits_used_max": 8, "energy_uj": energy, "energy_analog_uj": energy, "energy_digital_uj": 0.0,
            "latency_us": latency, "area_mm2": area}


REPORT = {
    "totals": {"reductions": {"vs_isaac": 2.0}},
    "costs": {"isaac": costs(20, 1.0, 10.0, 0.5, 100), "sme": costs(10, 1.5, 40.0, 0.4, 100)},
    "accuracy": {"isaac": 99.0, "sme": 98.5},
}


def test_tradeoff_names_every_axis_sme_loses_on():
    sentence = _tradeoff(REPORT)
    assert sentence == "Trade-off: against isaac, SME takes 1.50x the energy, 4.00x the latency, 0.50 points of accuracy."


def test_no_tradeoff_is_said_too():
    report = {**REPORT, "costs": {"isaac": REPORT["costs"]["sme"], "sme": REPORT["costs"]["sme"]},
              "accuracy": {"isaac": None, "sme": None}}
    assert _tradeoff(report).startswith("SME is no worse than isaac")


def test_headline_has_a_row_per_mapping_with_costs_and_accuracy():
    table = _headline(REPORT, ["isaac", "sme"]).splitlines()
    assert table[0].startswith("| mapping | crossbars | SME saves | reads | ADC conversions")
    assert table[2].startswith("| isaac | 20 | 2.00x |") and table[2].endswith("| 99 |")
    assert table[3].startswith("| sme | 10 | — |") and table[3].endswith("| 98.5 |")


def test_unlabelled_data_reports_agreement():
    report = {**REPORT, "accuracy": {**REPORT["accuracy"], "metric": "top-1 agreement with the float model"}}
    assert _headline(report, ["isaac", "sme"]).splitlines()[0].endswith("| agreement with float % |")
