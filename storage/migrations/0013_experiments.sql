-- Experiments (`mams experiment`): arms over a set of scenarios and seeds, paired. The
-- spec is the validated spec as JSON (domain.experiment.ExperimentSpec). Every (arm,
-- scenario) is one stored session (the scenario with the arm's overrides applied), so its
-- rooms are ordinary rooms of the log, resumable as any study's (`mams experiment
-- --resume`), and `mams compare` reads them back by session.
CREATE TABLE experiments (
    experiment_id uuid PRIMARY KEY,
    name          text        NOT NULL,
    spec          jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE experiment_arms (
    experiment_id uuid NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
    arm           text NOT NULL,
    scenario      text NOT NULL,
    session_id    uuid NOT NULL REFERENCES sessions (session_id),
    PRIMARY KEY (experiment_id, arm, scenario)
);
