"""The pipeline's core: the YAML schema (:mod:`.config`), the stage contract (:mod:`.stage`),
file helpers (:mod:`.files`) and run-directory locks (:mod:`.locks`)."""
