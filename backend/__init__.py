"""Platform adapters: everything that speaks HTTP/JSON to Label Studio (percent units, 1-based frames) lives here."""
