"""The dashboard's Content-Security-Policy: the page's own origin and its WebSocket, and
nothing a forged Host header could add."""

from services.gateway.routes.dashboard import content_security_policy


def test_the_policy_allows_the_origin_and_its_websocket_only() -> None:
    policy = content_security_policy("gateway.example:8080")
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == (
        "'self' ws://gateway.example:8080 wss://gateway.example:8080"
    )
    assert directives["frame-ancestors"] == "'none'"


def test_a_host_header_cannot_widen_the_policy() -> None:
    for host in ("evil.example; script-src *", "a b", "", "x.example/path"):
        policy = content_security_policy(host)
        assert "connect-src 'self'; " in policy
        assert "evil" not in policy
    assert "ws://[::1]:8080" in content_security_policy("[::1]:8080")
