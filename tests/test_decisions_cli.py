"""Choices, forms and assignees at the command line (real subprocesses, a SQLite file)."""

from __future__ import annotations

import json

import pytest

from .test_cli import cli

pytestmark = pytest.mark.timeout(120)
TARGET = "tests.decisions_pipeline:pipeline"


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    res = cli("run", TARGET, "--item", '{"id": "p1", "text": "hi"}', db=url)
    assert res.returncode == 0, res.stderr
    return url


def test_approve_by_a_non_assigned_reviewer_is_refused_and_the_assigned_one_succeeds(db):
    """--reviewer zed: exit 2 naming who may decide, nothing changes; ana succeeds."""
    res = cli("approve", TARGET, "p1", "moderate", "--choice", "publish", "--reviewer", "zed", db=db)
    assert res.returncode == 2
    assert "may only be decided by ana; reviewer 'zed' may not decide it" in res.stderr
    status = json.loads(cli("status", TARGET, "p1", "--json", db=db).stdout)
    assert status["stages"]["moderate"]["state"] == "awaiting_review"
    res = cli("approve", TARGET, "p1", "moderate", "--choice", "publish", db=db,
              env={"TREADLE_REVIEWER": "ana"})
    assert res.returncode == 0, res.stderr
    assert "approved p1 at moderate choosing publish" in res.stdout


def test_a_choice_not_offered_is_exit_2_naming_the_options(db):
    res = cli("approve", TARGET, "p1", "moderate", "--choice", "delete", "--reviewer", "ana", db=db)
    assert res.returncode == 2
    assert "'delete' is not an option; choose from 'publish', 'archive'" in res.stderr


def test_reviews_mine_and_json_show_what_is_asked(db):
    """reviews --mine lists only what the reviewer may decide; --json has options, assignees."""
    mine = cli("reviews", TARGET, "--mine", "--reviewer", "ana", db=db)
    assert "p1" in mine.stdout and "choose publish/archive" in mine.stdout
    other = cli("reviews", TARGET, "--mine", "--reviewer", "zed", db=db)
    assert "Nothing awaits review." in other.stdout
    [entry] = json.loads(cli("reviews", TARGET, "--json", db=db).stdout)
    assert entry["options"] == ["publish", "archive"] and entry["assignees"] == ["ana"]


def test_form_answers_at_the_cli_are_validated_then_flow_downstream(db):
    """approve --data with a wrong type names the field; interactive review asks field by field."""
    assert cli("approve", TARGET, "p1", "moderate", "--choice", "publish", "--reviewer", "ana",
               db=db).returncode == 0
    assert cli("run", TARGET, db=db).returncode == 0
    bad = cli("approve", TARGET, "p1", "tag", "--data", '{"isrc": 7, "label": "A"}', db=db)
    assert bad.returncode == 2 and "form field 'isrc' must be a str" in bad.stderr
    # interactive: approve, isrc typed, label kept from the data, year typed wrong then right
    res = cli("review", TARGET, input="a\nUS-1\n\nlast year\n1999\n", db=db)
    assert res.returncode == 0, res.stderr
    assert "form: isrc (str), label (str), year (int)" in res.stdout
    assert "form field 'year' must be a int, got 'last year'" in res.stdout
    assert cli("run", TARGET, db=db).returncode == 0
    status = json.loads(cli("status", TARGET, "p1", "--json", db=db).stdout)
    assert status["stages"]["release"]["output"] == {"isrc": "US-1", "year": 1999}


def test_interactive_review_offers_the_options(db):
    """The interactive review lists the options and takes a number."""
    res = cli("review", TARGET, "--reviewer", "ana", input="a\n2\n", db=db)
    assert "options: 1) publish  2) archive" in res.stdout
    assert "1 approved" in res.stdout
    assert cli("run", TARGET, db=db).returncode == 0
    status = json.loads(cli("status", TARGET, "p1", "--json", db=db).stdout)
    assert status["stages"]["tag"]["state"] == "skipped"
