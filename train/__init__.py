"""The `minillava` command and what it runs: [`training`] (build, sft, merge), [`hub`] (push, cards), [`conversion`]
(convert), [`eval`], [`chat`] (chat, web), [`compare`] and [`demo`]; [`checkpoints`] and [`plots`] are shared."""
