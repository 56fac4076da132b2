"""API keys: parsing from the environment and from a file (each bad entry paired with its
message), hashed storage, and the 401 / 403 split of ``ApiKeys.check``."""

from __future__ import annotations

import hashlib

import pytest

from wager.serving.auth import ENV_VAR, ApiKeys, AuthError


def _env(text: str) -> ApiKeys:
    keys = ApiKeys.from_env({ENV_VAR: text})
    assert keys is not None
    return keys


def test_env_keys_grant_their_scopes_and_admin_implies_all():
    keys = _env("key1:recommend,feedback; key2:admin ;")
    assert len(keys) == 2
    assert keys.scopes_of("key1") == {"recommend", "feedback"}
    assert keys.scopes_of("key2") == {"recommend", "feedback", "admin"}
    keys.check("key1", "recommend")
    keys.check("key1", "feedback")
    for scope in ("recommend", "feedback", "admin"):
        keys.check("key2", scope)


def test_unset_or_blank_env_means_no_keys():
    assert ApiKeys.from_env({}) is None
    assert ApiKeys.from_env({ENV_VAR: "  "}) is None


def test_check_answers_401_without_or_with_an_unknown_key_and_403_without_the_scope():
    keys = _env("key1:recommend")
    with pytest.raises(AuthError, match="no API key was sent") as no_key:
        keys.check(None, "recommend")
    assert no_key.value.status == 401
    with pytest.raises(AuthError, match="the API key is not known") as unknown:
        keys.check("key2", "recommend")
    assert unknown.value.status == 401
    with pytest.raises(AuthError, match="lacks the 'feedback' scope") as scope:
        keys.check("key1", "feedback")
    assert scope.value.status == 403


def test_keys_are_kept_as_sha256_digests_only():
    keys = _env("s3cret-key:recommend")
    held = repr(vars(keys))
    assert "s3cret-key" not in held
    assert repr(hashlib.sha256(b"s3cret-key").digest()) in held


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key1", "WAGER_API_KEYS entry 1: an API key entry is KEY:SCOPE"),
        (":recommend", "WAGER_API_KEYS entry 1: the key before ':' is empty"),
        ("key1:", "WAGER_API_KEYS entry 1: the key has no scope"),
        ("key1:recommend;key2:write", "WAGER_API_KEYS entry 2: unknown scope 'write'"),
        ("key1:recommend;key1:admin", "WAGER_API_KEYS entry 2: this key is already given at "
         "WAGER_API_KEYS entry 1"),
    ],
)  # fmt: skip
def test_bad_env_entries_name_the_entry_and_the_fix(text, message):
    with pytest.raises(ValueError) as err:
        ApiKeys.from_env({ENV_VAR: text})
    assert str(err.value).startswith(message)


def test_file_keys_skip_comments_and_blank_lines(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# service keys\n\nkey1:recommend,feedback\n  # admin\nkey2:admin\n")
    keys = ApiKeys.from_file(f)
    assert keys.scopes_of("key1") == {"recommend", "feedback"}
    assert keys.scopes_of("key2") == {"recommend", "feedback", "admin"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("key1:recommend\nkey2:reed\n", "keys.txt:2: unknown scope 'reed'"),
        ("# only a comment\n", "keys.txt: no API key in the file"),
        ("key1:admin\n\nkey1:recommend\n", "keys.txt:3: this key is already given at "
         "{f}:1"),
    ],
)  # fmt: skip
def test_bad_key_files_name_file_and_line(tmp_path, text, message):
    f = tmp_path / "keys.txt"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        ApiKeys.from_file(f)
    assert str(err.value).startswith(f"{tmp_path}/" + message.format(f=f))


def test_a_missing_key_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="cannot read the API key file"):
        ApiKeys.from_file(tmp_path / "nope.txt")
