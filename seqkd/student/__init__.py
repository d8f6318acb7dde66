"""The student stage: the trainer (:mod:`.trainer`: HF Trainer + loss hook), one setup path for every training job
(:mod:`.setup`), distillation (:mod:`.distill`) and the losses (:mod:`.losses`)."""
