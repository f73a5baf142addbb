"""What the tests run against and with: the fake Civitai, real servers, media made on the spot,
and the helpers that run the real commands. No test module is imported by another: what two
share lives here."""
