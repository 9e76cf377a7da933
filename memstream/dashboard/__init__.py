"""The dashboard: a browser face on the REST API (`memstream serve` at /dashboard).

A person signs in with an API key and sees, filters, audits, exports and cleans up the
memories of the key's project. The page is one server-rendered Jinja template plus one
plain-JavaScript file and one CSS file, all shipped in this package (no CDN). Every call it
makes goes to the same REST endpoints with the same `Authorization: Token <key>` as the SDKs,
so a page can never see more than its key can; the key lives only in the tab's
sessionStorage.
"""

from memstream.dashboard.routes import mount_dashboard

__all__ = ["mount_dashboard"]
