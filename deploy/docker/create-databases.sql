CREATE DATABASE opsledger_intake;
CREATE DATABASE opsledger_triage;
CREATE DATABASE opsledger_assignment;
CREATE DATABASE opsledger_sla;
CREATE DATABASE opsledger_resolution;
CREATE DATABASE opsledger_reporting;
