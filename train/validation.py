"""Validation during training: held-out losses per source and task, and a few pages generated and scored."""

from __future__ import annotations


class Validation:
    """Every `eval.every` steps: validation loss per source and task on held-out shards (all ranks share the
    batches; with the images shuffled across pages too), and a few pages generated greedily on rank 0, scored
    and logged with their predicted boxes."""

    def __init__(self, cfg, engine, tok, specs, model_cfg, logger, rank: int, world: int):
        from train.evaluate import Evaluator
        from train.pages import manifest_pages

        self.cfg, self.engine, self.model_cfg, self.logger = cfg.eval, engine, model_cfg, logger
        self.rank, self.world = rank, world
        self.evaluator = Evaluator(engine.module, tok, int(cfg.trainer.max_length), int(cfg.eval.batch))
        for spec in specs:
            pages = manifest_pages(spec.root, spec.name, int(cfg.eval.samples_per_source))
            self.evaluator.prepare(pages, (spec.task,))
        if rank == 0:
            print(
                f"validation: {len(self.evaluator.items)} held-out samples from {len(specs)} sources "
                f"every {cfg.eval.every} steps",
                flush=True,
            )

    def _generator_model(self):
        """The model to generate with on rank 0: the engine's own, or under ZeRO-3 a gathered copy."""
        if not self.engine.zero_optimization_partition_weights():
            return self.engine.module
        state = full_state(self.engine)  # collective: every rank takes part
        if self.rank != 0:
            return None
        from model.kosmos import Kosmos25

        copy = Kosmos25(self.model_cfg).to(self.engine.device)
        copy.load_full_state_dict({k: v.float() for k, v in state.items()}, "gathered ZeRO-3 weights")
        return copy.eval()

    def __call__(self, step: int) -> None:
        from train.evaluate import draw_layout

        ev, engine = self.evaluator, self.engine
        engine.eval()
        record = {f"val/loss/{k}": v for k, v in ev.losses(engine, self.rank, self.world).items()}
        if self.cfg.shuffled_images:
            shuffled = ev.losses(engine, self.rank, self.world, shuffle_images=True)
            record.update({f"val/loss_shuffled_images/{k}": v for k, v in shuffled.items()})
        images = []
        n = int(self.cfg.predictions)
        if n:
            model = self._generator_model()
            if self.rank == 0:
                items = sorted(ev.items, key=lambda it: it["task"] != "ocr")[:n]
                ev.model = model
                predictions = ev.predict(items, int(self.cfg.max_new_tokens))
                ev.model = engine.module
                for task, row in ev.score(predictions).get("overall", {}).items():
                    record.update({f"val/{task}/{k}": v for k, v in row.items() if k != "pages"})
                for p, it in zip(predictions, items, strict=True):
                    page = it["page"]
                    if p["task"] == "ocr":
                        image = draw_layout(page.image, p["lines"], page.lines)
                        caption = (
                            f"{p['source']}/{p['key']}: {len(p['lines'])} lines, F1 {p['scores']['f1']:.2f}"
                        )
                        images.append((image, caption, f"{p['source']}-{p['key']}"))
        engine.train()
        self.logger.eval(step, record, images)


def full_state(engine) -> dict:
    """The whole model's weights on rank 0 (ZeRO-3 shards gathered)."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict() or {}
    return engine.module.state_dict()
