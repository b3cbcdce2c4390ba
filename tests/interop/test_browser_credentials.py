"""Browsers log in with time-limited credentials from POST /credentials.

siptrio runs with digest authentication on and two ephemeral secrets. Chromium opens
examples/webphone (SIP.js in one browser, JsSIP in another, both over WSS with the
test CA trusted); each page presses "Get a credential" (POST /credentials on the
admin server it came from, which has no token here), registers with it, and the two
call each other. Then what must fail does, and the page says why:

* the same credential once it has expired: 403 "Forbidden: credential expired", and
  the page tells its user to get a new one;
* a credential signed by a retired secret: 401, "wrong name or password"; one signed
  by the second, still listed, secret registers.

Nothing ends up in the page's localStorage, sessionStorage or cookies.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser import DOMAIN, Chromium, Phone, Siptrio, chromium, needs_browser, run_siptrio, wait_for
from support.ephemeral import RETIRED, SECOND, SECRET, Credential, credential

pytestmark = [pytest.mark.slow, needs_browser(certutil=True)]

SETTINGS = {
    "auth.enable": "true",
    "auth.ephemeral_secrets": f"{SECRET}, {SECOND}",
    "auth.ephemeral_max_ttl": "3600",
}
TTL = 6  # seconds: long enough to register on a busy machine, short enough to wait out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Siptrio]:
    with run_siptrio(tmp_path_factory.mktemp("siptrio"), SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def browsers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    with chromium(tmp_path_factory.mktemp("chromium")) as b:
        yield b


def open_phone(browsers: Chromium, server: Siptrio, library: str, user: str) -> Phone:
    """The webphone over WSS in a fresh browser that trusts the test CA."""
    return Phone(
        browsers.launch(f"{library}-{user}", trust_ca=server.certs.ca),
        server,
        library=library,
        user=user,
        ws_url=server.wss_url,
    )


def use(phone: Phone, cred: Credential | dict[str, Any]) -> None:
    """What a web app's page does with the credential its backend got."""
    if isinstance(cred, Credential):
        cred = {"username": cred.username, "password": cred.password, "expires": cred.expires}
    phone.page.evaluate("(c) => window.phone.useCredential(c)", cred)


def failure(phone: Phone) -> dict[str, Any]:
    phone.wait_registration("failed")
    return dict(phone.page.evaluate("window.phone.failure"))


def stored(phone: Phone) -> list[Any]:
    return list(
        phone.page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    )


def test_sipjs_and_jssip_register_over_wss_and_call_each_other(
    server: Siptrio, browsers: Chromium
) -> None:
    alice = open_phone(browsers, server, "sipjs", "alice")
    bob = open_phone(browsers, server, "jssip", "bob")
    for phone in (alice, bob):
        phone.page.click("#get-credential")
        phone.page.wait_for_function("window.phone.credential !== null", timeout=10_000)
        username = phone.page.input_value("#auth-user")
        assert re.fullmatch(rf"\d+:{phone.user}", username), username
        assert phone.page.input_value("#password")
        assert "good until" in phone.shown("#credential")
        phone.register()
    for phone in (alice, bob):
        phone.wait_registration("registered")
        [binding] = server.bindings(phone.aor)
        assert binding["transport"] == "wss", binding
        # the REGISTER that got through carried the credential
        username = phone.page.input_value("#auth-user")
        assert f'username="{username}"' in server.log(), username

    for caller, callee in ((alice, bob), (bob, alice)):
        caller.call(callee.user)  # INVITE: 407, then again with the credential
        callee.wait_call("incoming")
        assert callee.call_info["peer"] == caller.aor
        callee.answer()
        callee.wait_call("established", acked=True)
        caller.wait_call("established")
        caller.hangup()
        assert caller.wait_call("ended")["endedBy"] == "local"
        assert callee.wait_call("ended")["endedBy"] == "remote"

    for phone in (alice, bob):
        assert stored(phone) == [0, 0, ""]
        assert not phone.errors(), phone.errors()
        phone.close()


@pytest.mark.parametrize("library", ["sipjs", "jssip"])
def test_the_same_credential_after_its_expiry_is_refused(
    server: Siptrio, browsers: Chromium, library: str
) -> None:
    user = f"carol-{library}"
    phone = open_phone(browsers, server, library, user)
    # the web app's backend asks for a short-lived credential and hands it to the page
    response = server.http.post("/credentials", json={"user": user, "ttl": TTL})
    assert response.status_code == 200, response.text
    cred = response.json()
    use(phone, cred)
    phone.register()
    phone.wait_registration("registered")
    phone.close()  # its WSS connection, and the binding on it, go
    wait_for(lambda: not server.bindings(f"sip:{user}@{DOMAIN}"), 5, "the binding to go")

    while time.time() < cred["expires"] + 1.5:
        time.sleep(0.2)
    again = open_phone(browsers, server, library, user)
    use(again, cred)
    again.register()
    assert failure(again) == {
        "status": 403,
        "reason": "Forbidden: credential expired",
        "kind": "expired",
    }
    assert again.shown("#reg-state") == "failed (403 Forbidden: credential expired)"
    assert "credential has expired: get a new one" in again.shown("#notice")
    assert server.bindings(f"sip:{user}@{DOMAIN}") == []
    again.close()


def test_second_secret_registers_a_retired_one_is_a_wrong_password(
    server: Siptrio, browsers: Chromium
) -> None:
    second = open_phone(browsers, server, "sipjs", "dave")
    use(second, credential("dave", secret=SECOND))
    second.register()
    second.wait_registration("registered")
    second.close()

    for library in ("sipjs", "jssip"):
        user = f"erin-{library}"
        retired = open_phone(browsers, server, library, user)
        use(retired, credential(user, secret=RETIRED))
        retired.register()
        assert failure(retired) == {"status": 401, "reason": "Unauthorized", "kind": "wrong-password"}  # fmt: skip
        assert "Wrong name or password" in retired.shown("#notice")
        assert server.bindings(f"sip:{user}@{DOMAIN}") == []
        retired.close()
