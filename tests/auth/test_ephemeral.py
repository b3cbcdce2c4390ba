"""Time-limited credentials (auth_ephemeral's scheme): the checker with explicit times, then
a real siptrio answering REGISTERs and INVITEs that carry them.

Every password here is computed by ``openssl`` (support/ephemeral.py), not by siptrio.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.client import SipClient
from support.digest import authorization, challenges
from support.ephemeral import RETIRED, SECOND, SECRET, credential, openssl_password
from support.server import RunningServer, running_server
from support.ua import SDP, UA

from siptrio.core.auth import AuthConfig, Authenticator
from siptrio.core.ephemeral import (
    EphemeralConfig,
    EphemeralUsername,
    UsernameFormat,
    make_password,
    make_username,
    parse_username,
)
from siptrio.sip.digest import ha1
from siptrio.sip.uri import parse_uri_untrusted

REALM = "example.com"
NOW = 1_800_000_000.0


# --- the scheme ------------------------------------------------------------------------


@pytest.mark.parametrize("hash", ["sha1", "sha256", "sha384", "sha512"])
def test_password_is_base64_hmac_of_the_username(hash: str) -> None:
    username = "1800000000:alice"
    assert make_password(SECRET.encode(), username, hash) == openssl_password(
        SECRET, username, hash
    )


@pytest.mark.parametrize(
    ("username", "fmt", "expected"),
    [
        ("1800000000:alice", "expiry:user", EphemeralUsername(1800000000, "alice")),
        ("1800000000:alice@example.com", "expiry:user", EphemeralUsername(1800000000, "alice@example.com")),
        ("1800000000", "expiry:user", EphemeralUsername(1800000000, "")),  # coturn's bare form
        ("1800000000:a:b", "expiry:user", EphemeralUsername(1800000000, "a:b")),  # first colon
        ("alice:1800000000", "user:expiry", EphemeralUsername(1800000000, "alice")),
        ("1800000000", "user:expiry", EphemeralUsername(1800000000, "")),
        ("alice:1800000000", "expiry:user", None),
        ("1800000000:alice", "user:expiry", None),
        ("1800000000:", "expiry:user", None),
        ("alice", "expiry:user", None),
        ("", "expiry:user", None),
        ("-5:alice", "expiry:user", None),
        ("\uff11\uff18:alice", "expiry:user", None),  # full-width digits are not a timestamp
        ("9" * 13 + ":alice", "expiry:user", None),
    ],
)  # fmt: skip
def test_username_formats(username: str, fmt: str, expected: EphemeralUsername | None) -> None:
    assert parse_username(username, UsernameFormat(fmt)) == expected


def test_make_username_round_trips() -> None:
    for fmt in UsernameFormat:
        assert parse_username(make_username("bob", 42, fmt), fmt) == EphemeralUsername(42, "bob")


def test_expired_after_the_expiry_second_as_auth_ephemeral() -> None:
    u = EphemeralUsername(1000, "a")
    assert not u.expired(1000.0) and not u.expired(1000.99) and u.expired(1001.0)


# --- the checker, with explicit times -------------------------------------------------------


def checker(**ephemeral: object) -> Authenticator:
    settings = {"secrets": (SECRET.encode(), SECOND.encode()), **ephemeral}
    config = AuthConfig(enabled=True, realm=REALM, ephemeral=EphemeralConfig(**settings))  # type: ignore[arg-type]
    auth = Authenticator(config, b"nonce-secret")
    auth.users = {
        "carol": {a: ha1("carol", REALM, "stored-pw", a) for a in ("MD5", "SHA-256")},
    }
    return auth


def answer(
    auth: Authenticator,
    username: str,
    password: str,
    *,
    challenged_at: float = NOW,
    algorithm: str = "MD5",
    nc: int = 1,
) -> str:
    values = [v for _, v in auth.challenge(proxy=False, now=challenged_at)]
    return authorization(
        challenges(values)[algorithm],
        method="REGISTER",
        uri=f"sip:{REALM}",
        user=username,
        password=password,
        algorithm=algorithm,
        nc=nc,
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
@pytest.mark.parametrize("secret", [SECRET, SECOND])
def test_a_credential_under_any_listed_secret_authenticates(secret: str, algorithm: str) -> None:
    auth = checker()
    c = credential("alice", expires=int(NOW) + 60, secret=secret)
    result = auth.verify_values(
        [answer(auth, c.username, c.password, algorithm=algorithm)], "REGISTER", now=NOW
    )
    assert result.user == c.username and not result.failed  # fmt: skip


def test_a_retired_secret_is_a_wrong_password() -> None:
    auth = checker()
    c = credential("alice", expires=int(NOW) + 60, secret=RETIRED)
    result = auth.verify_values([answer(auth, c.username, c.password)], "REGISTER", now=NOW)
    assert result.user is None and result.failed and not result.told and not result.final


def test_expired_credential_401_with_an_older_nonce_403_with_a_newer_one() -> None:
    auth = checker()
    c = credential("alice", expires=int(NOW) + 10)
    # the nonce came from a challenge while the credential was good
    older = auth.verify_values([answer(auth, c.username, c.password)], "REGISTER", now=NOW + 20)
    assert older.user is None and older.failed and older.told == "credential expired"
    assert not older.final
    # the nonce came from a challenge after the expiry: another cannot help
    newer = answer(auth, c.username, c.password, challenged_at=NOW + 15)
    final = auth.verify_values([newer], "REGISTER", now=NOW + 20)
    assert final.final and final.failed and final.told == "credential expired"
    # up to and including its expiry second it is good
    ok = auth.verify_values([answer(auth, c.username, c.password)], "REGISTER", now=NOW + 10.9)
    assert ok.user == c.username


def test_an_expired_credential_with_a_wrong_password_is_just_wrong() -> None:
    auth = checker()
    c = credential("alice", expires=int(NOW) - 10, secret=RETIRED)
    result = auth.verify_values([answer(auth, c.username, c.password)], "REGISTER", now=NOW)
    assert result.failed and not result.told


def test_replayed_nonce_count_is_refused() -> None:
    auth = checker()
    c = credential("alice", expires=int(NOW) + 60)
    given = answer(auth, c.username, c.password)
    assert auth.verify_values([given], "REGISTER", now=NOW).user == c.username
    again = auth.verify_values([given], "REGISTER", now=NOW)
    assert again.user is None and again.reason == "replayed nonce-count"


def test_user_expiry_format_and_sha256_hmac() -> None:
    auth = checker(hash="sha256", username_format=UsernameFormat.USER_EXPIRY)
    c = credential("alice", expires=int(NOW) + 60, hash="sha256", user_first=True)
    assert auth.verify_values([answer(auth, c.username, c.password)], "REGISTER", now=NOW).user
    sha1 = credential("alice", expires=int(NOW) + 60, user_first=True)  # the wrong HMAC
    assert auth.verify_values([answer(auth, sha1.username, sha1.password)], "REGISTER", now=NOW).failed  # fmt: skip


def test_stored_users_work_beside_them() -> None:
    auth = checker()
    assert auth.verify_values([answer(auth, "carol", "stored-pw")], "REGISTER", now=NOW).user
    assert auth.verify_values([answer(auth, "carol", "nope")], "REGISTER", now=NOW).failed


def test_without_secrets_an_ephemeral_username_is_an_unknown_user() -> None:
    auth = checker(secrets=())
    c = credential("alice", expires=int(NOW) + 60)
    assert auth.verify_values([answer(auth, c.username, c.password)], "REGISTER", now=NOW).failed


@pytest.mark.parametrize(
    ("username", "uri", "check_user", "allowed"),
    [
        ("1800000000:alice", "sip:alice@example.com", True, True),
        ("1800000000:alice", "sip:bob@example.com", True, False),
        ("1800000000:alice@example.com", "sip:alice@EXAMPLE.com", True, True),
        ("1800000000:alice@example.org", "sip:alice@example.com", True, False),
        ("1800000000", "sip:alice@example.com", True, False),  # names no user
        ("1800000000:alice", "sip:bob@example.com", False, True),
        ("1800000000", "sip:bob@example.com", False, True),
        ("carol", "sip:carol@example.com", True, True),  # a stored user: itself only
        ("carol", "sip:alice@example.com", False, False),
    ],
)  # fmt: skip
def test_which_address_a_credential_may_use(
    username: str, uri: str, check_user: bool, allowed: bool
) -> None:
    auth = checker(check_user=check_user)
    assert auth.may_claim(username, parse_uri_untrusted(uri)) is allowed


# --- a real siptrio -----------------------------------------------------------------------


def overrides(**more: str) -> dict[str, str]:
    return {
        "sip.domains": REALM,
        "auth.enable": "true",
        "auth.ephemeral_secrets": f"{SECRET}, {SECOND}",
        "security.ban_after": "5",
        **more,
    }


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, overrides()) as rs:
        rs.server.dispatcher.auth.users = {
            "carol": {a: ha1("carol", REALM, "stored-pw", a) for a in ("MD5", "SHA-256")}
        }
        yield rs


async def register(
    c: SipClient,
    aor_user: str,
    username: str,
    password: str,
    *,
    algorithm: str = "MD5",
    challenge: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    """Challenged, then answered (or answer a challenge got before); the final response."""
    if challenge is None:
        first = await c.request(c.register(aor_user))
        assert first.status == 401 and first.reason == "Unauthorized"
        challenge = challenges(first.values("www-authenticate"))[algorithm]
    auth = authorization(
        challenge,
        method="REGISTER",
        uri=f"sip:{REALM}",
        user=username,
        password=password,
        algorithm=algorithm,
    )
    return await c.request(c.register(aor_user, headers=(("Authorization", auth),)))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_credential_registers(server: RunningServer, transport: str, algorithm: str) -> None:
    c = await SipClient.connect(transport, *server.addr(transport))
    cred = credential("alice")
    ok = await register(c, "alice", cred.username, cred.password, algorithm=algorithm)
    assert ok.status == 200 and len(ok.values("contact")) == 1
    # and a stored user beside it
    carol = await register(c, "carol", "carol", "stored-pw", algorithm=algorithm)
    assert carol.status == 200


async def test_udp_register_takes_the_fast_path(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    cred = credential("alice")
    assert (await register(c, "alice", cred.username, cred.password)).status == 200
    assert server.server.core_stats["register_fast"] == 1


async def test_second_secret_passes_retired_one_fails(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    second = credential("alice", secret=SECOND)
    assert (await register(c, "alice", second.username, second.password)).status == 200
    retired = credential("bob", secret=RETIRED)
    refused = await register(c, "bob", retired.username, retired.password)
    assert (refused.status, refused.reason) == (401, "Unauthorized")  # says nothing more


async def test_expired_credential_is_refused_saying_so(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    # challenged while the credential is good, answered once it is not: 401, and why
    cred = credential("alice", ttl=1)
    first = await c.request(c.register("alice"))
    early = challenges(first.values("www-authenticate"))["MD5"]
    while time.time() < cred.expires + 1:
        await trio.sleep(0.2)
    late = await register(c, "alice", cred.username, cred.password, challenge=early)
    assert (late.status, late.reason) == (401, "Unauthorized: credential expired")
    assert late.values("www-authenticate")
    # answering the fresh challenge with it again: 403, final
    again = await register(c, "alice", cred.username, cred.password)
    assert (again.status, again.reason) == (403, "Forbidden: credential expired")
    assert server.server.core_stats["auth_failures"] == 2


async def test_credential_for_someone_else_is_forbidden(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    cred = credential("alice")
    r = await register(c, "bob", cred.username, cred.password)
    assert r.status == 403 and "register only its own address" in r.reason


async def test_without_check_user_any_address(tmp_path: Path) -> None:
    async with running_server(tmp_path, overrides(**{"auth.ephemeral_check_user": "false"})) as rs:
        c = await SipClient.connect("udp", *rs.addr("udp"))
        cred = credential("alice")
        assert (await register(c, "bob", cred.username, cred.password)).status == 200


async def test_user_expiry_format_with_sha512(tmp_path: Path) -> None:
    more = {"auth.ephemeral_username_format": "user:expiry", "auth.ephemeral_hash": "sha512"}
    async with running_server(tmp_path, overrides(**more)) as rs:
        c = await SipClient.connect("tcp", *rs.addr("tcp"))
        cred = credential("alice", hash="sha512", user_first=True)
        assert (await register(c, "alice", cred.username, cred.password)).status == 200
        draft = credential("alice", hash="sha512")  # <expiry>:<user>: not this server's format
        assert (await register(c, "alice", draft.username, draft.password)).status == 401


async def test_replayed_authorization_is_refused(server: RunningServer) -> None:
    c = await SipClient.connect("udp", *server.addr("udp"))
    cred = credential("alice")
    first = await c.request(c.register("alice"))
    ch = challenges(first.values("www-authenticate"))["MD5"]
    auth = authorization(
        ch, method="REGISTER", uri=f"sip:{REALM}", user=cred.username, password=cred.password
    )
    headers = (("Authorization", auth),)
    assert (await c.request(c.register("alice", headers=headers))).status == 200
    assert (await c.request(c.register("alice", headers=headers))).status == 401  # same nc


async def test_guessing_with_credentials_gets_banned(server: RunningServer) -> None:
    attacker = await SipClient.connect("udp", *server.addr("udp"))
    for n in range(5):
        forged = credential("alice", secret=f"guessed-secret-number-{n}")
        assert (await register(attacker, "alice", forged.username, forged.password)).status == 401
    await attacker.send(attacker.register("alice"))
    with pytest.raises(trio.TooSlowError):  # banned: dropped without an answer
        await attacker.receive(0.5)
    assert server.server.core_stats["auth_bans"] == 1


async def test_calls_with_a_credential(server: RunningServer) -> None:
    """An INVITE from our domain: 407, then through with the same credential."""
    bob_cred, alice_cred = credential("bob"), credential("alice")
    callee_c = await SipClient.connect("tcp", *server.addr("tcp"))
    assert (await register(callee_c, "bob", bob_cred.username, bob_cred.password)).status == 200
    callee = UA(callee_c, "bob")
    caller = UA(await SipClient.connect("udp", *server.addr("udp")), "alice")
    invite, _ = caller.invite("bob")
    await caller.client.send(invite)
    r = await caller.expect_response("INVITE")
    assert r.status == 407
    auth = authorization(
        challenges(r.values("proxy-authenticate"))["MD5"],
        method="INVITE",
        uri="sip:bob@example.com",
        user=alice_cred.username,
        password=alice_cred.password,
    )
    invite2, _ = caller.invite("bob")
    invite2 = invite2.replace(
        b"Max-Forwards: 70\r\n", f"Max-Forwards: 70\r\nProxy-Authorization: {auth}\r\n".encode()
    )
    await caller.client.send(invite2)
    got = await callee.expect_request("INVITE")
    await callee.reply(got, 200, "OK", body=SDP)
    assert (await caller.expect_response("INVITE")).status == 200


def test_offered_algorithms_are_the_only_ones_accepted() -> None:
    """[auth] algorithms = MD5: for SIPp, which answers the first challenge, in MD5 only."""
    auth = Authenticator(
        AuthConfig(enabled=True, realm=REALM, algorithms=("MD5",)), b"nonce-secret"
    )
    auth.users = {"carol": {a: ha1("carol", REALM, "pw", a) for a in ("MD5", "SHA-256")}}
    values = [v for _, v in auth.challenge(proxy=False, now=NOW)]
    assert list(challenges(values)) == ["MD5"]
    nonce = challenges(values)["MD5"]
    sha = authorization(
        {**nonce, "algorithm": "SHA-256"}, method="REGISTER", uri=f"sip:{REALM}",
        user="carol", password="pw", algorithm="SHA-256",
    )  # fmt: skip
    assert auth.verify_values([sha], "REGISTER", now=NOW).failed
    md5 = answer(auth, "carol", "pw")
    assert auth.verify_values([md5], "REGISTER", now=NOW).user == "carol"
