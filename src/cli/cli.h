/*
 * cli.h - the client-side commands of the one `hotplex` binary. Each takes
 * the full argv (argv[1] is the command name) and returns the process exit
 * code. `serve` lives in main.c.
 */
#ifndef HOTPLEX_CLI_H
#define HOTPLEX_CLI_H

int cmd_chat(int argc, char **argv);     /* interactive terminal client / one-shot -p */
int cmd_token(int argc, char **argv);    /* mint a JWT */
int cmd_sessions(int argc, char **argv); /* list/terminate/delete via the admin API */
int cmd_doctor(int argc, char **argv);   /* check the setup and say what to fix */
int cmd_config(int argc, char **argv);   /* config check FILE / config show */

#endif
