/* registry.c - worker types by name. */
#include <string.h>

#include "worker/worker.h"

static const wkr_ops_t *const all[] = {&wkr_echo_ops, &wkr_claude_code_ops, &wkr_opencode_server_ops};

const wkr_ops_t *wkr_lookup(const char *type)
{
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(all[i]->type, type) == 0) return all[i];
    return NULL;
}
