"""`minillava demo`: the synthetic visual-QA world ([`world`]), the small pretrained parts built from it
([`components`]), and the two-architecture comparison run on them ([`run`])."""
