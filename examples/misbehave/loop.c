/* loop: never returns. The node must stop it at its timeout and keep serving. */
int main(void) {
    volatile unsigned long spins = 0;
    for (;;) spins++;
}
