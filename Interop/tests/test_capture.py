"""The tshark-based counter against the independent decoder's summaries of the shared
real-kernel captures (when both tshark and ../shared/captures are present)."""
import json
import os
import shutil

import pytest

from lab import capture

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                      "shared", "captures")


def test_fold_and_compare():
    ours = {"1->2": {"v3.2 RCOM ?": 5, "v3.2 OPTS>MSG REQUEST": 2, "v3.2 ACK": 1}}
    theirs = {"1->2": {"v3.2 RCOM STATUS": 3, "v3.2 RCOM STATUS_REPLY": 2, "v3.2 OPTS>MSG REQUEST": 2,
                       "v3.2 ACK": 1}}
    assert capture.compare(ours, theirs) == []
    theirs["1->2"]["v3.2 ACK"] = 2
    assert capture.compare(ours, theirs) == ["1->2 v3.2 ACK: tshark 1, dlm-peer 2"]


def test_compare_lower_bound_for_sctp():
    ours = {"1->2": {"v3.2 ACK": 4, "v3.2 OPTS>MSG REQUEST": 2}}
    theirs = {"1->2": {"v3.2 ACK": 7, "v3.2 OPTS>MSG REQUEST": 2}}
    assert capture.compare(ours, theirs, exact=False) == []
    assert capture.compare(ours, theirs) == ["1->2 v3.2 ACK: tshark 4, dlm-peer 7"]
    assert capture.compare({"1->2": {"v3.2 ACK": 8}}, theirs, exact=False) != []


def test_duplicates():
    assert capture.duplicates([0, 1, 2, 2, 3, 5, 5]) == [2, 5]
    assert capture.duplicates([]) == []


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
@pytest.mark.parametrize("name", ["A-61-tcp-3node", "C-510-tcp", "E-612-tcp"])
def test_tshark_counts_match_reference(name):
    d = os.path.join(SHARED, name)
    if not os.path.exists(os.path.join(d, "capture.pcap")):
        pytest.skip("shared captures not present")
    s = json.load(open(os.path.join(d, "summary.json")))
    recs = capture.read(os.path.join(d, "capture.pcap"), {k: str(v) for k, v in s["ip_to_nodeid"].items()})
    assert len(recs) == s["dlm_messages"]
    assert capture.compare(capture.counts_by_direction(recs), s["counts_by_direction"]) == []
    for dirn, st in s.get("opts_seq", {}).items():
        seqs = capture.seqs(recs, dirn)
        assert len(seqs) == st["count"]
        assert capture.duplicates(seqs) == st["duplicates"]
