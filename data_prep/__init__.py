"""Turn Tulu 3 / SmolTalk (hub ids or local files) into the merged, filtered chat set."""
